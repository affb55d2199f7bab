"""Patch-level anomaly maps of SignDrivenDetector (tiny random backbone): shapes, same-pass scores, memory bank,
checkpoints, token layout, and pixel-level training on planted lesions."""

import copy

import pytest
import torch
from sklearn.metrics import roc_auc_score

from sdmad_monai.data.lesions import planted_lesion_slices
from sdmad_monai.losses import SDMADLoss
from sdmad_monai.networks import SignDrivenDetector
from sdmad_monai.networks.anomaly_map import MemoryBankError
from sdmad_monai.workflows import PrepareBatchWithMasks

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")


@pytest.fixture(scope="module")
def detector():
    return SignDrivenDetector.from_preset("tiny").eval()


def images(n=3, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_maps_have_input_size_and_scores_are_unchanged(detector):
    x = images()
    with torch.no_grad():
        out = detector(x, output="all")
        plain = SignDrivenDetector.from_preset("tiny", map_layers=[]).eval()(x, output="all")
    assert out["anomaly_map"].shape == (3, 64, 64)
    assert out["patch_logits"].shape == (3, 4, 8, 8)  # 4 map layers (the adapter layers) on the 8 x 8 patch grid
    assert "anomaly_map" not in plain and "anomaly_map_few_shot" not in out
    for key in ("scores", "predictions", "image_score", "similarities", "image_features"):
        assert torch.equal(out[key], plain[key]), key
    assert torch.equal(detector.anomaly_maps(x), out["anomaly_map"])
    assert torch.all((out["anomaly_map"] >= 0) & (out["anomaly_map"] <= 1))
    skipped = detector(x, output="all", maps=False)  # what training without the pixel loss and plain inference use
    assert not {"anomaly_map", "anomaly_map_zero_shot", "patch_logits"} & set(skipped)
    assert set(skipped) == set(plain)
    for key in ("scores", "predictions", "image_score", "similarities", "image_features"):
        assert torch.equal(skipped[key], out[key]), key


def test_patch_tokens_are_projected_like_the_pooled_token(detector):
    # sdmad-tiny average-pools: its image feature is the mean of the last block's projected patch tokens
    head = detector.anomaly_head
    assert head.layers[-1] == 6 and head._batch_first
    x = images(2)
    with torch.no_grad(), head.capturing() as captured:
        features = detector.encode_image(x)
    patches = head.patch_features(captured, (64, 64))
    assert patches[-1].shape == (2, 64, 64)
    torch.testing.assert_close(patches[-1].mean(dim=1), features, atol=1e-5, rtol=1e-5)
    # a sequence-first tower (open_clip < 2.23) gives the same patches from [L, B, W] tokens
    head._batch_first = False
    try:
        swapped = head.patch_features({k: v.transpose(0, 1) for k, v in captured.items()}, (64, 64))
    finally:
        head._batch_first = True
    torch.testing.assert_close(swapped[-1], patches[-1])


def test_maps_see_the_adapted_tokens():
    detector = SignDrivenDetector.from_preset("tiny").eval()
    x = images(1)
    with torch.no_grad():
        for adapter in detector.image_adapters.values():
            adapter.fc2.bias.add_(1.0)
        adapted = detector.anomaly_maps(x)
        with detector.adapters_disabled():
            bare = detector.anomaly_maps(x)
    assert not torch.allclose(adapted, bare)


def test_memory_bank_branch(detector):
    detector = copy.deepcopy(detector)
    x = images(3)
    with torch.no_grad():
        assert detector.set_memory_bank(x[:1]) == 4 * 0 + 64  # 64 patches per layer for one image
        out = detector(x, output="all")
    few = out["anomaly_map_few_shot"]
    assert few[0].abs().max() < 1e-5  # the banked image's patches are their own nearest neighbours
    assert few[1:].mean() > 0.05
    torch.testing.assert_close(out["anomaly_map"], 0.5 * out["anomaly_map_zero_shot"] + 0.5 * few)
    with detector.adapters_disabled(), pytest.raises(MemoryBankError, match="adapters on"):
        detector(x, output="all")
    detector.clear_memory_bank()
    with torch.no_grad():
        assert "anomaly_map_few_shot" not in detector(x, output="all")


def test_checkpoint_round_trips_bank_and_map_config(tmp_path):
    detector = SignDrivenDetector.from_preset("tiny", map_layers=[3, 6], map_temperature=0.05, map_sigma=1.5).eval()
    x = images(2)
    with torch.no_grad():
        detector.set_memory_bank(x[:1])
        expected = detector.anomaly_maps(x)
    path = detector.save(tmp_path / "model.pt")
    assert torch.load(path, weights_only=True)["anomaly_head.memory_bank"].shape == (2, 64, 64)
    loaded = SignDrivenDetector.load(path).eval()
    assert loaded.config["map_layers"] == [3, 6] and loaded.anomaly_head.temperature == 0.05
    assert loaded.anomaly_head.sigma == 1.5 and loaded.anomaly_head.has_memory_bank
    with torch.no_grad():
        torch.testing.assert_close(loaded.anomaly_maps(x), expected)
    other = SignDrivenDetector.from_preset("tiny", map_layers=[2, 5])
    with pytest.raises(RuntimeError, match="memory bank was built for map layers"):
        other.load_state_dict(SignDrivenDetector.read_checkpoint(path))
    # a checkpoint written without maps loads with an empty bank
    state = {k: v for k, v in SignDrivenDetector.read_checkpoint(path).items() if "anomaly_head" not in k}
    fresh = SignDrivenDetector.from_preset("tiny", map_layers=[3, 6])
    fresh.load_state_dict(state)
    assert not fresh.anomaly_head.has_memory_bank


def test_bad_map_layers_are_a_clear_error():
    with pytest.raises(ValueError, match="Map layers"):
        SignDrivenDetector.from_preset("tiny", map_layers=[7])


def _clip(batch, detector):
    mean = torch.tensor(detector.image_mean)[None, :, None, None]
    std = torch.tensor(detector.image_std)[None, :, None, None]
    return (batch["image"].repeat(1, 3, 1, 1) / 1.3 - mean) / std


def test_planted_lesion_scores_higher_inside_after_pixel_training():
    torch.manual_seed(0)
    # the demo's adapter settings (configs/train.json): every image block, lambda 0.5, no text adapter
    detector = SignDrivenDetector.from_preset(
        "tiny", image_adapter_layers=[1, 2, 3, 4, 5, 6], adapter_lambda=0.5, text_adapter=False
    )
    train = planted_lesion_slices(8, 64, seed=1, abnormal_fraction=0.75)
    test = planted_lesion_slices(8, 64, seed=2, abnormal_fraction=1.0)
    inside = test["mask"][:, 0] > 0.5

    def contrast():
        detector.eval()
        with torch.no_grad():
            maps = detector.anomaly_maps(_clip(test, detector))
        auroc = roc_auc_score(inside.flatten().numpy(), maps.flatten().numpy())
        return maps[inside].mean() - maps[~inside].mean(), auroc

    gap_before, auroc_before = contrast()
    labels = torch.zeros(8, 6)
    labels[:, 2] = train["label"]  # "Nonspecific lesion"
    image, target = PrepareBatchWithMasks()({"image": _clip(train, detector), "label": labels, "mask": train["mask"]})
    loss_function = SDMADLoss(pixel_loss_weight=1.0)
    optimizer = torch.optim.Adam(detector.trainable_parameters(), lr=5e-3)
    for _ in range(20):
        detector.train()
        optimizer.zero_grad()
        loss_function(detector(image, output="all"), target).backward()
        optimizer.step()
    gap_after, auroc_after = contrast()
    assert gap_after > 0.02  # mean map inside the lesions > mean outside, on held-out slices
    assert gap_after > gap_before + 0.02 and auroc_after > auroc_before


def test_deepcopy_captures_into_its_own_head():
    """The capture hooks of a deep copy must hand the copy's block outputs to the copy's head. Hooks that still point
    at the original's head (a closure over it: the bug this guards against) write into the original's store, so the
    copy captures nothing, or the original's tokens, and its maps do not follow its own adapters."""
    original = SignDrivenDetector.from_preset("tiny").eval()
    clone = copy.deepcopy(original)
    x = images(2)
    with torch.no_grad():
        # running the copy while the original captures: the original's store stays empty, the copy's gets every layer
        with original.anomaly_head.capturing() as original_store, clone.anomaly_head.capturing() as clone_store:
            clone.backbone.encode_image(x)
        assert original_store == {}, "the copy's capture hooks wrote into the original's head"
        assert sorted(clone_store) == clone.anomaly_head.layers, "the copy's head captured no block output"
        before = original.anomaly_maps(x)
        assert torch.equal(clone.anomaly_maps(x), before)
        for adapter in clone.image_adapters.values():  # change the copy's adapters only
            adapter.fc2.bias.add_(1.0)
        moved = clone.anomaly_maps(x)
        assert not torch.allclose(moved, before, atol=1e-4), "the copy's maps ignore the copy's adapters"
        assert torch.equal(original.anomaly_maps(x), before)  # the original is untouched
        # the copy's maps are those of a detector built afresh with the copy's weights (its own, never copied, hooks)
        fresh = SignDrivenDetector.from_preset("tiny").eval()
        fresh.load_state_dict(clone.state_dict())
        torch.testing.assert_close(moved, fresh.anomaly_maps(x))
