"""Hand-computed checks of the paper's equations in sdmad_monai.functional (2-D vectors, answers worked out below)."""

import math
import warnings

import pytest
import torch

from sdmad_monai.functional import (
    anchor_feature_from_normal_prompts,
    anchor_loss,
    anchor_loss_terms,
    anchor_predictions,
    category_ranking_loss,
    category_scores,
    image_anomaly_score,
    image_text_loss,
    select_signs,
    selection_with_fallback,
)

R2 = 1 / math.sqrt(2)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# Prompts: normal (1, 0); category 0: (0, 1) and (1, 1)/sqrt2; category 1: (-1, 0).
TEXT = t([1.0, 0.0], [0.0, 1.0], [R2, R2], [-1.0, 0.0])
CATS = torch.tensor([-1, 0, 0, 1])
ANCHOR = torch.tensor([1.0, 0.0], dtype=torch.float64)


def test_image_text_loss_hand_computed():
    # image (1, 0) with category 0: d to (0,1) is 1, d to (1,1)/sqrt2 is 1 - 1/sqrt2.
    # normal image (0, 1): matched to the normal prompt (1, 0): d = 1.
    images = t([1.0, 0.0], [0.0, 1.0])
    labels = t([1.0, 0.0], [0.0, 0.0])
    expected = ((1 + (1 - R2)) + 1) / 2
    assert image_text_loss(images, TEXT, CATS, labels).item() == pytest.approx(expected)


def test_image_text_loss_sums_over_every_positive_category_and_normalises_inputs():
    images = t([2.0, 0.0])  # not unit length: normalised inside
    labels = t([1.0, 1.0])  # categories 0 and 1 -> prompts 1, 2, 3
    expected = 1 + (1 - R2) + 2  # d to (-1, 0) is 2
    assert image_text_loss(images, TEXT, CATS, labels).item() == pytest.approx(expected)


def test_anchor_loss_hand_computed():
    # image (0.6, 0.8): cos to anchor 0.6 -> a = 0.4; d to (0,1) = 0.2; d to (1,1)/sqrt2 = 1 - 1.4/sqrt2;
    # d to (-1,0) = 1.6.
    d_diag = 1 - 1.4 * R2
    images = t([0.6, 0.8], [0.6, 0.8])
    labels = t([0.0, 1.0], [0.0, 0.0])
    terms = anchor_loss_terms(images, TEXT, CATS, ANCHOR, labels)
    # image 0 has category 1: positive hinge max(0, 1.6 - 0.4) = 1.2;
    # negatives over category 0: max(0, 0.4 - 0.2) + max(0, 0.4 - d_diag).
    # image 1 is normal: no positive term; negatives over all category prompts; (-1,0) gives max(0, 0.4-1.6) = 0.
    negative = 0.2 + (0.4 - d_diag)
    assert terms.positive.tolist() == pytest.approx([1.2, 0.0])
    assert terms.negative.tolist() == pytest.approx([negative, negative])
    assert terms.violations.tolist() == [3, 2]
    expected = ((1.2 + negative) + negative) / 2
    assert anchor_loss(images, TEXT, CATS, ANCHOR, labels).item() == pytest.approx(expected)


def test_anchor_loss_negative_term_is_not_the_printed_typo():
    # The paper prints max(0, d(img,t) - d(img,t)), which is always 0. Remark 3.1 wants the anchor closer than any
    # prompt of a category the image lacks: here the category-1 prompt (0.6, 0.8) equals the image, the anchor is
    # farther, so the negative term must be positive.
    images = t([0.6, 0.8])
    text = t([1.0, 0.0], [0.6, 0.8])
    categories = torch.tensor([-1, 0])
    labels = t([0.0])  # normal image
    terms = anchor_loss_terms(images, text, categories, ANCHOR, labels)
    assert terms.negative.item() == pytest.approx(0.4)  # a - d = 0.4 - 0
    assert terms.positive.item() == 0.0


def test_anchor_loss_is_zero_when_remark_3_1_holds():
    images = t([0.0, 1.0])
    text = t([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    categories = torch.tensor([-1, 0, 1])
    anchor = torch.tensor([R2, R2], dtype=torch.float64)
    # category 0 prompt d=0 <= d(anchor)=1-1/sqrt2 <= d(category 1 prompt)=1
    assert anchor_loss(images, text, categories, anchor, t([1.0, 0.0])).item() == 0.0


def test_category_ranking_loss_hand_computed():
    # Eq. 7 scores with TEXT: category 0 = max(cos to (0,1), cos to (1,1)/sqrt2), category 1 = cos to (-1,0).
    # image A (1, 0): s0 = 1/sqrt2, s1 = -1; image B (0, 1): s0 = 1, s1 = 0; image C (-1, 0): s0 = 0, s1 = 1.
    images = t([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    labels = t([1.0, 0.0], [0.0, 1.0], [0.0, 0.0])  # A has category 0, B has category 1, C is normal
    margin = 0.5
    # category 0: positive A (s0 = 1/sqrt2) against B (1) and C (0): max(0, 0.5 - (R2 - 1)) + max(0, 0.5 - R2), / 2
    # category 1: positive B (s1 = 0) against A (-1) and C (1): max(0, 0.5 - 1) + max(0, 0.5 + 1), / 2
    expected = (0.5 - (R2 - 1) + 0.0) / 2 + (0.0 + 1.5) / 2
    assert category_ranking_loss(images, TEXT, CATS, labels, margin).item() == pytest.approx(expected)
    # the order holds by more than the margin: nothing to pay
    # category-0 image (0, 1) scores 1 on category 0, the others 0 and R2; category-1 image (-1, 0) scores 1, the
    # others 0 and -1: every gap is at least 1 - R2 > 0.2
    ordered = t([0.0, 1.0], [-1.0, 0.0], [1.0, 0.0])
    assert category_ranking_loss(ordered, TEXT, CATS, t([1.0, 0.0], [0.0, 1.0], [0.0, 0.0]), 0.2).item() == 0.0


def test_category_ranking_loss_needs_both_kinds_of_images():
    images = t([1.0, 0.0], [0.0, 1.0])
    images.requires_grad_(True)
    everyone = category_ranking_loss(images, TEXT, CATS, t([1.0, 1.0], [1.0, 1.0]))
    nobody = category_ranking_loss(images, TEXT, CATS, t([0.0, 0.0], [0.0, 0.0]))
    assert everyone.item() == nobody.item() == 0.0
    everyone.backward()  # still a graph: adding it to a loss never breaks backward
    assert torch.equal(images.grad, torch.zeros_like(images))
    with pytest.raises(ValueError, match="margin must be >= 0"):
        category_ranking_loss(images, TEXT, CATS, t([1.0, 0.0], [0.0, 0.0]), margin=-0.1)


def test_select_signs_drops_planted_outlier():
    text = t(
        [-1.0, 0.0],  # normal
        [-0.99, -0.141],  # normal
        [1.0, 0.0],  # category 0
        [0.99, 0.141],  # category 0
        [0.2, 0.98],  # category 0 outlier: d to (0,1) is 0.02, to its own nearest sibling 0.66
        [0.0, 1.0],  # category 1 (sibling at d=0.01, outlier at d=0.02: kept)
        [-0.141, 0.99],  # category 1
    )
    categories = torch.tensor([-1, -1, 0, 0, 0, 1, 1])
    keep = select_signs(text, categories)
    assert keep.tolist() == [True, True, True, True, False, True, True]


def test_select_signs_alone_in_category_and_strictness():
    # prompt 0 (cat 0): nearest same (0,1) at d=1, nearest other (0,-1) at d=1 -> tie -> not kept (strict <)
    # prompt 3 (cat 2) is alone: no same-category neighbour -> not kept.
    text = t([1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0])
    categories = torch.tensor([0, 0, 1, 2])
    keep = select_signs(text, categories)
    assert keep.tolist()[0] is False
    assert keep.tolist()[3] is False
    assert keep.tolist()[2] is False  # alone in category 1 too


def test_selection_fallback_restores_all_prompts_with_warning():
    categories = torch.tensor([-1, 0, 0, 1, 1])
    keep = torch.tensor([True, False, False, True, False])
    with pytest.warns(UserWarning, match="Craniotomy"):
        fixed = selection_with_fallback(keep, categories, 2, ["Craniotomy", "Lesion"])
    assert fixed.tolist() == [True, True, True, True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warn=False: the same mask and no warning
        assert selection_with_fallback(keep, categories, 2, warn=False).tolist() == fixed.tolist()


def test_category_scores_require_a_kept_prompt_per_category():
    with pytest.raises(ValueError, match="selection_with_fallback"):
        category_scores(t([1.0, 0.0]), TEXT, CATS, torch.tensor([True, True, True, False]), 2)


SCORE_TEXT = t([-0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [R2, R2])
SCORE_CATS = torch.tensor([-1, 0, 0, 1, 1])


@pytest.mark.parametrize(
    "keep, expected",
    [
        ([True] * 5, [1.0, R2]),
        ([True, False, True, True, True], [0.0, R2]),  # best prompt of category 0 discarded
        ([True, True, True, True, False], [1.0, -1.0]),
    ],
)
def test_category_scores_max_over_kept(keep, expected):
    scores = category_scores(t([1.0, 0.0]), SCORE_TEXT, SCORE_CATS, torch.tensor(keep), 2)
    assert scores[0].tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    "keep, expected",
    [
        # anchor = normal prompt (-0.6, 0.8): cos(img, anchor) = -0.6.
        # cat 0: min(1, 0) = 0 > -0.6 -> 1; cat 1: min(-1, 1/sqrt2) = -1 -> 0.
        ([True] * 5, [1.0, 0.0]),
        # without (-1, 0): cat 1 min is 1/sqrt2 > -0.6 -> 1
        ([True, True, True, False, True], [1.0, 1.0]),
    ],
)
def test_anchor_predictions_min_over_kept_vs_anchor(keep, expected):
    anchor = anchor_feature_from_normal_prompts(SCORE_TEXT, SCORE_CATS)
    predictions = anchor_predictions(t([1.0, 0.0]), SCORE_TEXT, SCORE_CATS, torch.tensor(keep), anchor, 2)
    assert predictions[0].tolist() == expected


def test_anchor_predictions_strictly_greater():
    # category prompt equal to the anchor: similarity equal, not greater -> 0
    text = t([1.0, 0.0], [1.0, 0.0])
    categories = torch.tensor([-1, 0])
    anchor = anchor_feature_from_normal_prompts(text, categories)
    predictions = anchor_predictions(t([0.3, 0.7]), text, categories, torch.tensor([True, True]), anchor, 1)
    assert predictions.tolist() == [[0.0]]


def test_anchor_feature_is_normalised_mean_of_normal_prompts():
    text = t([2.0, 0.0], [0.0, 5.0], [1.0, 1.0])
    anchor = anchor_feature_from_normal_prompts(text, torch.tensor([-1, -1, 0]))
    assert anchor.tolist() == pytest.approx([R2, R2])
    with pytest.raises(ValueError, match="normal prompt"):
        anchor_feature_from_normal_prompts(text, torch.tensor([0, 0, 1]))


def test_image_anomaly_score_is_margin_over_anchor():
    scores = t([0.2, 0.5], [0.1, 0.0])
    assert image_anomaly_score(scores, torch.tensor([0.3, 0.4], dtype=torch.float64)).tolist() == pytest.approx(
        [0.2, -0.3]
    )


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"prompt_categories must be \[P\] with P=4"):
        image_text_loss(t([1.0, 0.0]), TEXT, torch.tensor([0, 1]), t([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"labels must be multi-hot \[B, K\]"):
        image_text_loss(t([1.0, 0.0]), TEXT, CATS, torch.tensor([1.0, 0.0]))


def test_losses_differentiable():
    images = torch.tensor([[0.6, 0.8]], requires_grad=True)
    loss = image_text_loss(images, TEXT.float(), CATS, torch.tensor([[0.0, 1.0]])) + anchor_loss(
        images, TEXT.float(), CATS, ANCHOR.float(), torch.tensor([[0.0, 1.0]])
    )
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


# ------------------------------------------------------------------ patch-level anomaly maps (MVFA formulas)
def test_zero_shot_patch_logits_hand_computed():
    from sdmad_monai.functional import zero_shot_patch_logits

    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # normal, category 0, category 1 (unit vectors)
    categories = torch.tensor([-1, 0, 1])
    patches = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])  # [1, 2, 2]
    anchor = torch.tensor([1.0, 0.0])
    logits = zero_shot_patch_logits(patches, text, categories, torch.tensor([True, True, True]), anchor, 0.5)
    # patch 0: max(cos to cat prompts) = max(0, 0.6) = 0.6, cos(anchor) = 1 -> (0.6 - 1) / 0.5; patch 1: (1 - 0) / 0.5
    torch.testing.assert_close(logits, torch.tensor([[-0.8, 2.0]]))
    dropped = zero_shot_patch_logits(patches, text, categories, torch.tensor([True, True, False]), anchor, 0.5)
    torch.testing.assert_close(dropped, torch.tensor([[-2.0, 2.0]]))  # only the kept prompt of category 0 counts


def test_nearest_normal_patch_distance_hand_computed():
    from sdmad_monai.functional import nearest_normal_patch_distance

    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    patches = torch.tensor([[[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]])
    expected = torch.tensor([[0.0, 1 - 2**-0.5, 1.0]])
    torch.testing.assert_close(nearest_normal_patch_distance(patches, bank), expected)


def test_patch_grid_and_layer_maps():
    from sdmad_monai.functional import (
        combine_anomaly_maps,
        few_shot_anomaly_map,
        patch_grid_to_image,
        smooth_anomaly_map,
        zero_shot_anomaly_map,
    )

    values = torch.arange(6.0).reshape(1, 1, 6)
    assert torch.equal(patch_grid_to_image(values, (2, 3), (2, 3))[0, 0], torch.arange(6.0).reshape(2, 3))
    up = patch_grid_to_image(values, (2, 3), (4, 6))
    reference = torch.nn.functional.interpolate(values.reshape(1, 1, 2, 3), size=(4, 6), mode="bilinear")
    torch.testing.assert_close(up, reference)
    logits = torch.tensor([[[[0.0]], [[2.0]]]])  # [1, 2 layers, 1, 1]
    expected = (0.5 + torch.sigmoid(torch.tensor(2.0)).item()) / 2  # sigmoid per layer, then the layer mean
    torch.testing.assert_close(zero_shot_anomaly_map(logits, (3, 3)), torch.full((1, 3, 3), expected))
    distances = torch.tensor([[[[0.2]], [[0.4]]]])
    torch.testing.assert_close(few_shot_anomaly_map(distances, (2, 2)), torch.full((1, 2, 2), 0.3))
    zero, few = torch.full((1, 2, 2), 0.8), torch.full((1, 2, 2), 0.2)
    torch.testing.assert_close(combine_anomaly_maps(zero, few, 0.25), torch.full((1, 2, 2), 0.65))
    assert combine_anomaly_maps(zero, None) is zero
    constant = torch.full((2, 9, 9), 0.3)
    torch.testing.assert_close(smooth_anomaly_map(constant, 1.0), constant)
    spike = torch.zeros(1, 11, 11)
    spike[0, 5, 5] = 1.0
    smoothed = smooth_anomaly_map(spike, 1.0)
    assert smoothed.argmax() == 5 * 11 + 5 and abs(smoothed.sum().item() - 1.0) < 1e-4 and smoothed.max() < 0.2
    with pytest.raises(ValueError, match="do not fill"):
        patch_grid_to_image(values, (2, 2), (4, 4))
