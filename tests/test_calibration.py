"""Calibration: monotone per-category probabilities fitted on validation, operating points, round trip."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from sdmad_monai.calibration import Calibration, OperatingPoint, calibration_margin, fit_calibration


def data(seed=0, n=200):
    rng = np.random.default_rng(seed)
    labels = rng.random((n, 3)) < [0.3, 0.5, 0.0]  # third category: no positive
    margins = rng.normal(0, 0.02, (n, 3)) + labels * [0.03, -0.02, 0.0]  # second ranks backwards
    return margins, labels


def test_margin_is_score_minus_anchor_similarity():
    scores = torch.tensor([[0.3, 0.1], [0.2, 0.5]])
    assert torch.allclose(
        calibration_margin(scores, torch.tensor([0.25, 0.4])), torch.tensor([[0.05, -0.15], [-0.2, 0.1]])
    )


def test_fit_matches_scikit_learn_on_the_standardised_margin_and_is_monotone():
    margins, labels = data()
    calibration = fit_calibration(margins, labels, ["a", "b", "c"])
    first = calibration.categories[0]
    x = margins[:, 0]
    reference = LogisticRegression(C=1.0).fit(((x - x.mean()) / x.std())[:, None], labels[:, 0])
    expected = reference.predict_proba(((x - x.mean()) / x.std())[:, None])[:, 1]
    probabilities = calibration.probabilities(margins)
    assert np.allclose(probabilities[:, 0], expected, atol=1e-9)
    order = np.argsort(x)
    assert np.all(np.diff(probabilities[order, 0]) >= 0) and first.slope > 0
    assert (first.positives, first.negatives) == (int(labels[:, 0].sum()), int((~labels[:, 0]).sum()))
    # ranked backwards on validation: constant base rate, said so
    second = calibration.categories[1]
    assert second.slope == 0.0 and "no increasing relation" in second.note
    assert np.allclose(probabilities[:, 1], labels[:, 1].mean())
    # no positive slice: no probability rather than an invented one
    assert not calibration.categories[2].calibrated and np.isnan(probabilities[:, 2]).all()


def test_reproduces_from_the_stored_parameters():
    margins, labels = data(1)
    calibration = fit_calibration(margins, labels, ["a", "b", "c"])
    restored = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert restored == calibration
    assert np.array_equal(restored.probabilities(margins), calibration.probabilities(margins), equal_nan=True)


def test_target_sensitivity_threshold_on_validation():
    margins, labels = data(2)
    category = fit_calibration(margins, labels, ["a", "b", "c"]).categories[0]
    rule = category.threshold(OperatingPoint(0.9))
    positives = category.probability(margins[labels[:, 0], 0])
    assert rule["rule"] == "probability" and (positives >= rule["threshold"]).mean() >= 0.9
    assert (positives > rule["threshold"]).mean() < 0.9  # the highest such threshold
    assert rule["validation_sensitivity"] == pytest.approx((positives >= rule["threshold"]).mean())
    assert category.threshold(OperatingPoint()) == {"rule": "eq8"}
    uncalibrated = fit_calibration(margins, labels, ["a", "b", "c"]).categories[2]
    assert uncalibrated.threshold(OperatingPoint(0.9))["rule"] == "eq8"


@pytest.mark.parametrize("value", [1.5, 0, {"sensitivity": 0.9}, "youden"])
def test_bad_operating_point_is_one_clear_error(value):
    with pytest.raises(ValueError, match="operating_point"):
        OperatingPoint.from_config(
            value if isinstance(value, dict) or isinstance(value, str) else {"target_sensitivity": value}
        )
