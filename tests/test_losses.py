"""Loss modules: Eq. 5 is the sum of the functional Eq. 3 and Eq. 4, components are reported."""

import pytest
import torch

from sdmad_monai.functional import anchor_loss, category_ranking_loss, image_text_loss
from sdmad_monai.losses import AnchorLoss, ImageTextLoss, SDMADLoss


def outputs():
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(7, 4, generator=generator)
    return {
        "image_features": torch.randn(3, 4, generator=generator),
        "text_features": text,
        "prompt_categories": torch.tensor([-1, -1, 0, 0, 1, 1, 2]),
        "anchor_feature": torch.nn.functional.normalize(text[:2].mean(0), dim=0),
    }


LABELS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def test_sdmad_loss_is_eq5_sum():
    out = outputs()
    args = (out["image_features"], out["text_features"], out["prompt_categories"])
    expected_it = image_text_loss(*args, LABELS)
    expected_anchor = anchor_loss(*args, out["anchor_feature"], LABELS)
    loss = SDMADLoss()
    assert loss(out, LABELS).item() == pytest.approx((expected_it + expected_anchor).item())
    assert ImageTextLoss()(out, LABELS).item() == pytest.approx(expected_it.item())
    assert AnchorLoss()(out, LABELS).item() == pytest.approx(expected_anchor.item())
    components = loss.components
    assert components["image_text"] == pytest.approx(expected_it.item())
    assert components["anchor_positive"] + components["anchor_negative"] == pytest.approx(expected_anchor.item())
    assert components["remark31_violations"] >= 0


def test_weights_and_bad_prediction_type():
    out = outputs()
    weighted = SDMADLoss(image_text_weight=0.0, anchor_weight=2.0)(out, LABELS)
    assert weighted.item() == pytest.approx(2 * AnchorLoss()(out, LABELS).item())
    with pytest.raises(TypeError, match="output='all'"):
        SDMADLoss()(torch.zeros(3, 3), LABELS)
    with pytest.raises(KeyError, match="anchor_feature"):
        SDMADLoss()({k: v for k, v in out.items() if k != "anchor_feature"}, LABELS)


def test_ranking_term_is_off_by_default_and_added_with_its_weight():
    out = outputs()
    args = (out["image_features"], out["text_features"], out["prompt_categories"])
    paper = SDMADLoss()
    paper_value = paper(out, LABELS).item()
    assert "category_ranking" not in paper.components
    ranking = category_ranking_loss(*args, LABELS, margin=0.3).item()
    assert ranking > 0  # the random features do not order the images
    loss = SDMADLoss(ranking_loss_weight=2.0, ranking_margin=0.3)
    assert loss(out, LABELS).item() == pytest.approx(paper_value + 2.0 * ranking)
    assert loss.components["category_ranking"] == pytest.approx(ranking)
    for name in ("ranking_loss_weight", "ranking_margin", "pixel_loss_weight"):
        with pytest.raises(ValueError, match=f"{name} must be >= 0"):
            SDMADLoss(**{name: -1.0})


# ------------------------------------------------------------------ pixel-level segmentation terms (MVFA)
def test_pixel_segmentation_loss_hand_computed():
    from sdmad_monai.losses import PixelSegmentationLoss

    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]]])  # [B=1, L=1, 2, 2], maps at mask size
    mask = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    p = torch.sigmoid(logits)[0, 0]
    y = mask[0, 0]
    pt = torch.where(y > 0, p, 1 - p)
    focal = (-((1 - pt) ** 2) * torch.log(pt)).mean()
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    loss = PixelSegmentationLoss()({"patch_logits": logits}, mask)
    torch.testing.assert_close(loss, focal + dice)
    # the same with MONAI's reference losses
    from monai.losses import DiceLoss, FocalLoss

    reference = FocalLoss(gamma=2.0)(logits, mask) + DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)(logits, mask)
    torch.testing.assert_close(loss, reference)


def test_pixel_loss_layers_upsampling_and_validity():
    from sdmad_monai.losses import PixelSegmentationLoss

    loss_function = PixelSegmentationLoss()
    logits = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :2, :2] = 1.0
    full = loss_function({"patch_logits": logits}, masks)
    per_layer = [loss_function({"patch_logits": logits[:, i : i + 1]}, masks) for i in range(2)]
    torch.testing.assert_close(full, (per_layer[0] + per_layer[1]) / 2)  # mean over layers
    only_first = loss_function({"patch_logits": logits[:1]}, masks[:1])
    masked = loss_function({"patch_logits": logits}, masks, torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(masked, only_first)
    zero = loss_function({"patch_logits": logits.requires_grad_()}, masks, torch.zeros(3))
    assert zero.item() == 0.0


def test_sdmad_loss_with_pixel_terms():
    from sdmad_monai.losses import PixelSegmentationLoss, SDMADLoss

    generator = torch.Generator().manual_seed(1)
    outputs = {
        "image_features": torch.randn(2, 4, generator=generator),
        "text_features": torch.randn(3, 4, generator=generator),
        "prompt_categories": torch.tensor([-1, 0, 0]),
        "anchor_feature": torch.nn.functional.normalize(torch.randn(4, generator=generator), dim=0),
        "patch_logits": torch.randn(2, 2, 2, 2, generator=generator),
    }
    labels = torch.tensor([[1.0], [0.0]])
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 2:5, 2:5] = 1.0
    target = {"label": labels, "mask": masks, "mask_valid": torch.ones(2)}
    base = SDMADLoss()(outputs, labels)
    combined = SDMADLoss(pixel_loss_weight=0.5)(outputs, target)
    torch.testing.assert_close(combined, base + 0.5 * PixelSegmentationLoss()(outputs, masks))
    torch.testing.assert_close(SDMADLoss()(outputs, target), base)  # weight 0 ignores the masks
    with pytest.raises(KeyError, match="needs masks"):
        SDMADLoss(pixel_loss_weight=1.0)(outputs, labels)
