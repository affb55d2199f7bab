"""Loss modules: Eq. 5 is the sum of the functional Eq. 3 and Eq. 4, components are reported."""

import pytest
import torch

from sdmad_monai.functional import anchor_loss, image_text_loss
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
