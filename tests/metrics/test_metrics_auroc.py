import warnings

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from sdmad_monai.metrics import CategoryAUROCMetric, ImageAUROCMetric, average_ranks, binary_auroc, compute_auroc


def _multilabel(seed, n=40, k=4, tied=False):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, k, generator=g) < 0.4).float()
    y[0], y[1] = 1, 0  # every category has both classes
    noise = torch.randint(0, 4, (n, k), generator=g).float() if tied else torch.randn(n, k, generator=g)
    return y + noise * 0.6, y  # tied: scores on a coarse grid, many ties across classes


@pytest.mark.parametrize("seed", range(3))
def test_average_ranks_match_scipy(seed):
    x = torch.randint(0, 5, (30,), generator=torch.Generator().manual_seed(seed)).float()
    np.testing.assert_allclose(average_ranks(x).numpy(), rankdata(x.numpy()))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_binary_auroc_matches_sklearn_with_ties(seed, tied):
    y_pred, y = _multilabel(seed, k=1, tied=tied)
    expected = roc_auc_score(y.numpy()[:, 0], y_pred.numpy()[:, 0])
    assert binary_auroc(y_pred[:, 0], y[:, 0]).item() == pytest.approx(expected, abs=1e-12)


def test_binary_auroc_all_tied_is_half_and_single_class_is_nan():
    assert binary_auroc(torch.ones(6), torch.tensor([0, 1, 0, 1, 1, 0])).item() == pytest.approx(0.5)
    assert torch.isnan(binary_auroc(torch.rand(4), torch.ones(4)))


@pytest.mark.parametrize("tied", [False, True])
def test_category_auroc_streamed_matches_sklearn(tied):
    y_pred, y = _multilabel(7, tied=tied)
    metric = CategoryAUROCMetric()
    for start in range(0, 40, 8):  # batch-first input
        metric(y_pred=y_pred[start : start + 8], y=y[start : start + 8])
    p, t = y_pred.numpy(), y.numpy()
    per_cat = [roc_auc_score(t[:, k], p[:, k]) for k in range(4)]
    np.testing.assert_allclose(metric.aggregate(average="none").numpy(), per_cat, atol=1e-12)
    assert metric.aggregate().item() == pytest.approx(np.mean(per_cat), abs=1e-12)
    assert metric.aggregate("macro").item() == pytest.approx(roc_auc_score(t, p, average="macro"), abs=1e-12)
    assert metric.aggregate("weighted").item() == pytest.approx(roc_auc_score(t, p, average="weighted"), abs=1e-12)
    assert metric.aggregate("micro").item() == pytest.approx(roc_auc_score(t, p, average="micro"), abs=1e-12)
    # a decollated list of [K] items gives the same result
    listed = CategoryAUROCMetric(average="none")
    listed(y_pred=list(y_pred), y=list(y))
    np.testing.assert_allclose(listed.aggregate().numpy(), per_cat, atol=1e-12)
    metric.reset()
    with pytest.raises(ValueError, match="no data"):
        metric.aggregate()


def test_category_auroc_single_class_category_is_nan_and_named():
    y_pred, y = _multilabel(3, k=3)
    y[:, 1] = 0  # no positive of category 1
    metric = CategoryAUROCMetric(category_names=["tumor", "edema", "hemorrhage"])
    metric(y_pred=y_pred, y=y)
    with pytest.warns(UserWarning, match=r"'edema' \(index 1\)"):
        per_cat = metric.aggregate(average="none")
    assert torch.isnan(per_cat[1]) and not torch.isnan(per_cat[[0, 2]]).any()
    with pytest.warns(UserWarning, match="edema"):
        mean = metric.aggregate()
    p, t = y_pred.numpy(), y.numpy()
    expected = np.mean([roc_auc_score(t[:, k], p[:, k]) for k in (0, 2)])
    assert mean.item() == pytest.approx(expected, abs=1e-12)


def test_category_auroc_all_nan_mean_is_nan():
    metric = CategoryAUROCMetric()
    metric(y_pred=torch.rand(5, 2), y=torch.ones(5, 2))
    with pytest.warns(UserWarning, match="undefined"):
        assert torch.isnan(metric.aggregate())


def test_category_auroc_errors():
    with pytest.raises(ValueError, match=r"y_pred shape \(4, 3\).*y shape \(4, 2\)"):
        CategoryAUROCMetric()(y_pred=torch.rand(4, 3), y=torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"`y` must be binary.*\[0\.5\]"):
        CategoryAUROCMetric()(y_pred=torch.rand(2, 2), y=torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="K=2"):
        CategoryAUROCMetric(category_names=["a", "b"])(y_pred=torch.rand(4, 3), y=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        CategoryAUROCMetric()(y_pred=torch.tensor([[float("nan")]]), y=torch.ones(1, 1))
    with pytest.raises(ValueError):
        CategoryAUROCMetric(average="bogus")


@pytest.mark.parametrize("label_form", ["1d", "2d1", "multihot"])
@pytest.mark.parametrize("tied", [False, True])
def test_image_auroc_matches_sklearn(label_form, tied):
    scores, y_cat = _multilabel(11, n=30, k=3, tied=tied)
    score = scores.max(dim=1).values
    abnormal = y_cat.any(dim=1).float()
    y_in = {"1d": abnormal, "2d1": abnormal[:, None], "multihot": y_cat}[label_form]
    metric = ImageAUROCMetric()
    for start in range(0, 30, 7):
        metric(y_pred=score[start : start + 7, None], y=y_in[start : start + 7])
    expected = roc_auc_score(abnormal.numpy(), score.numpy())
    assert metric.aggregate().item() == pytest.approx(expected, abs=1e-12)
    listed = ImageAUROCMetric()  # decollated per-image items: scalar score, [K] labels
    listed(y_pred=list(score), y=list(y_in))
    assert listed.aggregate().item() == pytest.approx(expected, abs=1e-12)


def test_image_auroc_single_class_and_errors():
    metric = ImageAUROCMetric()
    metric(y_pred=torch.rand(4), y=torch.zeros(4, 3))
    with pytest.warns(UserWarning, match="all 4 images are normal"):
        assert torch.isnan(metric.aggregate())
    with pytest.raises(ValueError, match=r"y_pred shape \(4, 3\)"):
        ImageAUROCMetric()(y_pred=torch.rand(4, 3), y=torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"y_pred shape \(4,\) and y shape \(5, 3\)"):
        ImageAUROCMetric()(y_pred=torch.rand(4), y=torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\[2\]"):
        ImageAUROCMetric()(y_pred=torch.rand(2), y=torch.tensor([0, 2]))


def test_compute_auroc_functional_no_warning_when_defined():
    y_pred, y = _multilabel(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = compute_auroc(y_pred, y, average="none")
    assert out.shape == (4,) and out.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda():
    y_pred, y = _multilabel(2, tied=True)
    cat, img = CategoryAUROCMetric(average="none"), ImageAUROCMetric()
    cat(y_pred=y_pred.cuda(), y=y.cuda())
    img(y_pred=y_pred.max(dim=1).values.cuda(), y=y.cuda())
    p, t = y_pred.numpy(), y.numpy()
    np.testing.assert_allclose(
        cat.aggregate().cpu().numpy(), [roc_auc_score(t[:, k], p[:, k]) for k in range(4)], atol=1e-12
    )
    assert img.aggregate().item() == pytest.approx(roc_auc_score(t.any(1), p.max(1)), abs=1e-12)
