"""DetectorInferer and ProtocolInferer on the tiny detector: each variant against an independent computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdmad_monai.functional import anchor_feature_from_normal_prompts, anchor_predictions, category_scores
from sdmad_monai.inferers import VARIANTS, DetectorInferer, ProtocolInferer
from sdmad_monai.networks import DetectorOutput, SignDrivenDetector, load_clip

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

ATOL = 1e-5


@pytest.fixture(scope="module")
def detector():
    return SignDrivenDetector.from_preset("tiny").eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def protocol(detector, images):
    with torch.no_grad():
        return ProtocolInferer()(images, detector)


def assert_outputs_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype.is_floating_point:
            torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


def test_detector_inferer_outputs(detector, images):
    with torch.no_grad():
        everything = DetectorInferer("all")(images, detector)
        direct = detector(images, output="all")
        scores = DetectorInferer("scores")(images, detector)
        predictions = DetectorInferer("predictions")(images, detector)
    assert isinstance(everything, DetectorOutput) and isinstance(direct, DetectorOutput)
    assert_outputs_close(everything, direct)
    torch.testing.assert_close(scores, direct["scores"])
    assert torch.equal(predictions, direct["predictions"])
    assert DetectorInferer().output == "all"


def test_protocol_inferer_variants(protocol, detector):
    assert list(protocol) == list(VARIANTS) == ["clip", "sdmad_no_ss", "sdmad"]
    k, p = detector.num_categories, len(detector.prompt_texts)
    for variant, result in protocol.items():
        assert result["scores"].shape == (3, k), variant
        assert result["predictions"].shape == (3, k), variant
        assert result["image_score"].shape == (3,), variant
        assert result["similarities"].shape == (3, p), variant
    assert protocol["clip"]["keep"].all()
    assert protocol["sdmad_no_ss"]["keep"].all()


def test_sdmad_variant_is_the_detector(protocol, detector, images):
    with torch.no_grad():
        direct = detector(images, output="all")
    assert_outputs_close(protocol["sdmad"], direct)


def test_sdmad_no_ss_keeps_every_prompt(protocol, detector, images):
    with torch.no_grad():
        direct = detector(images, output="all")
    keep = torch.ones_like(direct["keep"])
    k = detector.num_categories
    args = (direct["image_features"], direct["text_features"], direct["prompt_categories"], keep)
    torch.testing.assert_close(protocol["sdmad_no_ss"]["scores"], category_scores(*args, k), atol=ATOL, rtol=1e-5)
    expected_predictions = anchor_predictions(*args, direct["anchor_feature"], k)
    assert torch.equal(protocol["sdmad_no_ss"]["predictions"], expected_predictions)
    # same image pass as the trained variant
    torch.testing.assert_close(protocol["sdmad_no_ss"]["image_features"], direct["image_features"])


def test_clip_variant_is_the_bare_backbone(protocol, detector, images):
    model, _ = load_clip("sdmad-tiny", seed=0)
    with torch.no_grad():
        image_features = model.encode_image(images)
        text_features = model.encode_text(detector.tokens)
    categories = detector.prompt_categories
    keep = torch.ones_like(categories, dtype=torch.bool)
    k = detector.num_categories
    expected = category_scores(image_features, text_features, categories, keep, k)
    clip = protocol["clip"]
    torch.testing.assert_close(clip["scores"], expected, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(clip["image_features"], image_features, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(clip["text_features"], text_features, atol=ATOL, rtol=1e-4)
    anchor = anchor_feature_from_normal_prompts(text_features, categories)
    torch.testing.assert_close(clip["anchor_feature"], anchor, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(
        clip["similarities"],
        F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T,
        atol=ATOL,
        rtol=1e-4,
    )
    # the adapters really change the result, so "clip" is not accidentally the trained model
    assert not torch.allclose(clip["scores"], protocol["sdmad_no_ss"]["scores"], atol=1e-3)
    # and the context manager restored the adapters
    assert detector.adapters_enabled


def test_variant_subset_and_order(detector, images, protocol):
    with torch.no_grad():
        result = ProtocolInferer(["sdmad", "clip"])(images, detector)
    assert list(result) == ["sdmad", "clip"]
    torch.testing.assert_close(result["clip"]["scores"], protocol["clip"]["scores"])
    with torch.no_grad():
        only = ProtocolInferer(("sdmad_no_ss",))(images, detector)
    assert list(only) == ["sdmad_no_ss"]


def test_wrapped_network(detector, images, protocol):
    class Wrapper(nn.Module):  # as DistributedDataParallel: the detector under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    with torch.no_grad():
        result = ProtocolInferer()(images, Wrapper(detector))
    torch.testing.assert_close(result["sdmad"]["scores"], protocol["sdmad"]["scores"])


@pytest.mark.parametrize("variants", [["sdmad", "zero_shot"], ["CLIP"], []])
def test_bad_variant_name(variants):
    with pytest.raises(ValueError, match="Unknown evaluation variants"):
        ProtocolInferer(variants)


def test_type_error_for_other_network(images):
    with pytest.raises(TypeError, match="SignDrivenDetector"):
        ProtocolInferer()(images, nn.Linear(3, 3))


def test_protocol_inferer_does_not_recompute_text_states_per_batch(detector, images, monkeypatch):
    """The sdmad and clip variants alternate adapters on/off every batch; both text states stay cached."""
    calls = []
    original = detector._compute_text_state
    monkeypatch.setattr(detector, "_compute_text_state", lambda: calls.append(1) or original())
    inferer = ProtocolInferer()
    with torch.no_grad():
        first = inferer(images, detector)
        warm = len(calls)  # at most the two states not cached yet
        for _ in range(3):
            again = inferer(images, detector)
    assert warm <= 2 and len(calls) == warm
    assert_outputs_close(first["clip"], again["clip"])
    assert_outputs_close(first["sdmad"], again["sdmad"])
