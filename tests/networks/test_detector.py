"""SignDrivenDetector on the tiny random-initialised backbone: gradients, caching, checkpoints, switches, errors."""

import copy
import warnings

import pytest
import torch

from sdmad_monai.functional import category_scores
from sdmad_monai.losses import SDMADLoss
from sdmad_monai.networks import DetectorStateError, SignDrivenDetector, load_clip
from sdmad_monai.prompts import PromptBankError

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")


@pytest.fixture(scope="module")
def detector():
    return SignDrivenDetector.from_preset("tiny")


def batch(size=4, image_size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, image_size, image_size, generator=generator)
    labels = torch.zeros(size, 6)
    for row, column in [(0, 0), (1, 2), (1, 4)]:  # image 0: one category, image 1: two, the rest normal
        if row < size:
            labels[row, column] = 1.0
    return images, labels


def train_steps(detector, steps=2):
    optimizer = torch.optim.Adam(detector.trainable_parameters(), lr=1e-2)
    loss_function = SDMADLoss()
    images, labels = batch()
    detector.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_function(detector(images, output="all"), labels)
        loss.backward()
        optimizer.step()
    detector.eval()
    return loss


def test_forward_shapes_and_outputs(detector):
    images, _ = batch()
    with torch.no_grad():
        scores = detector(images)
        everything = detector(images, output="all")
    assert scores.shape == (4, 6)
    assert torch.equal(scores, everything["scores"])
    assert set(everything["predictions"].unique().tolist()) <= {0.0, 1.0}
    assert everything["similarities"].shape == (4, len(detector.prompt_texts))
    assert everything["image_score"].shape == (4,)


def test_only_adapters_receive_gradients():
    detector = SignDrivenDetector.from_preset("tiny")
    images, labels = batch()
    detector.train()
    SDMADLoss()(detector(images, output="all"), labels).backward()
    assert all(not p.requires_grad and p.grad is None for p in detector.backbone.parameters())
    adapters = list(detector.image_adapters.values()) + [detector.text_adapter]
    for adapter in adapters:
        assert adapter.fc1.weight.grad is not None and adapter.fc1.weight.grad.abs().sum() > 0
        assert adapter.fc2.weight.grad is not None and adapter.fc2.weight.grad.abs().sum() > 0
    trainable = {id(p) for p in detector.trainable_parameters()}
    assert trainable == {id(p) for a in adapters for p in a.parameters()}


def test_cached_text_path_equals_encode_text_and_follows_training():
    detector = SignDrivenDetector.from_preset("tiny")
    detector.eval()
    with torch.no_grad():
        before = detector.text_state().features.clone()
        assert torch.allclose(before, detector.backbone.encode_text(detector.tokens), atol=1e-6)
    train_steps(detector)
    with torch.no_grad():
        after = detector.text_state().features
        reference = detector.backbone.encode_text(detector.tokens)  # full pass, adapter hook included
    assert not torch.allclose(before, after), "text adapter update must invalidate the cache"
    assert torch.allclose(after, reference, atol=1e-6)


def test_text_cache_reused_when_weights_unchanged(detector):
    detector.eval()
    with torch.no_grad():
        first = detector.text_state()
        second = detector.text_state()
    assert first is second


def test_adapters_disabled_is_bare_clip(detector):
    bare, _ = load_clip("sdmad-tiny", seed=0)
    images, _ = batch()
    detector.eval()
    with torch.no_grad(), detector.adapters_disabled():
        features = detector.encode_image(images)
        text = detector.text_state()
    with torch.no_grad():
        assert torch.allclose(features, bare.encode_image(images), atol=1e-6)
        assert torch.allclose(text.features, bare.encode_text(detector.tokens), atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(detector.encode_image(images), features)


def test_sign_selection_switch():
    detector = SignDrivenDetector.from_preset("tiny", sign_selection=False)
    with torch.no_grad():
        state = detector.text_state()
    assert bool(state.keep.all())
    images, _ = batch()
    with torch.no_grad():
        expected = category_scores(
            detector.encode_image(images), state.features, state.prompt_categories, state.keep, 6
        )
        assert torch.equal(detector(images), expected)


def test_checkpoint_round_trip_reproduces_scores(tmp_path):
    detector = SignDrivenDetector.from_preset("tiny")
    train_steps(detector)
    path = detector.save(tmp_path / "model.pt")
    assert path.stat().st_size < 2_000_000  # adapters + bank, no backbone
    images, _ = batch(seed=3)
    restored = SignDrivenDetector.load(path)
    restored.eval()
    with torch.no_grad():
        assert torch.equal(detector(images), restored(images))
        assert torch.equal(detector(images, output="predictions"), restored(images, output="predictions"))
    assert not list(tmp_path.glob("*.tmp"))


def test_monai_style_checkpoint_is_read(tmp_path):
    detector = SignDrivenDetector.from_preset("tiny")
    torch.save({"network": detector.state_dict(), "epoch": 3}, tmp_path / "monai.pt")
    state = SignDrivenDetector.read_checkpoint(tmp_path / "monai.pt")
    assert "_extra_state" in state and not any(k.startswith("backbone.") for k in state)


def test_checkpoint_from_other_bank_or_backbone_is_refused(tmp_path):
    path = SignDrivenDetector.from_preset("tiny").save(tmp_path / "model.pt")
    state = SignDrivenDetector.read_checkpoint(path)
    reordered = SignDrivenDetector.from_preset(
        "tiny",
        categories=[
            "Posttreatment change",
            "Craniotomy",
            "Nonspecific lesion",
            "Dural thickening",
            "Enlarged ventricles",
            "Global label: Small vessel chronic white matter ischemic change",
        ],
    )
    with pytest.raises(DetectorStateError, match="prompt bank"):
        reordered.load_state_dict(state)
    other_layers = SignDrivenDetector.from_preset("tiny", image_adapter_layers=[1, 2, 3, 4])
    with pytest.raises(DetectorStateError, match="image_adapter_layers"):
        other_layers.load_state_dict(state)
    with pytest.raises(DetectorStateError, match="no SD-MAD detector state"):
        torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
        SignDrivenDetector.read_checkpoint(tmp_path / "foreign.pt")


def test_seed_must_match_only_where_it_builds_the_backbone(tmp_path):
    # pretrained=None: the seed draws the backbone, so another seed is another network
    random_init = SignDrivenDetector.from_preset("tiny", seed=3).save(tmp_path / "random.pt")
    with pytest.raises(DetectorStateError, match="seed: checkpoint 3 vs detector 0"):
        SignDrivenDetector.from_preset("tiny").load_state_dict(SignDrivenDetector.read_checkpoint(random_init))
    # pretrained weights: the seed only initialised the adapters the checkpoint replaces (a sweep's seeds)
    trained = SignDrivenDetector.from_preset("tiny", pretrained="demo", seed=3)
    train_steps(trained)
    built = SignDrivenDetector.from_preset("tiny", pretrained="demo", seed=0)
    built.load_state_dict(SignDrivenDetector.read_checkpoint(trained.save(tmp_path / "demo.pt")))
    assert built.config["seed"] == 3
    images, _ = batch(seed=5)
    trained.eval(), built.eval()
    with torch.no_grad():
        assert torch.equal(trained(images), built(images))


def test_torchscript_export_is_the_score_path():
    detector = SignDrivenDetector.from_preset("tiny")
    train_steps(detector)
    scripted = torch.jit.script(detector)  # what MONAI's ckpt_export does with network_def
    images, _ = batch(size=3, seed=4)
    detector.eval()
    with torch.no_grad():
        assert torch.allclose(scripted(images), detector(images), atol=1e-5)
        assert scripted(images[:1]).shape == (1, 6)


def test_image_size_240_on_tiny_model():
    detector = SignDrivenDetector.from_preset("tiny", image_size=240)
    assert detector.image_size == 240
    assert detector.backbone.visual.positional_embedding.shape[0] == (240 // 8) ** 2 + 1
    images, _ = batch(size=2, image_size=240)
    with torch.no_grad():
        assert detector(images).shape == (2, 6)


def test_bad_adapter_layer_is_a_clear_error():
    with pytest.raises(ValueError, match=r"has 6 blocks.*1\.\.6.*\[7\]"):
        SignDrivenDetector.from_preset("tiny", image_adapter_layers=[2, 7])
    with pytest.raises(ValueError, match="24-block ViT-L/14"):
        SignDrivenDetector(model_name="sdmad-tiny", pretrained=None, image_size=None)


def test_unknown_category_is_a_clear_error():
    with pytest.raises(PromptBankError, match="'Mass'"):
        SignDrivenDetector.from_preset("tiny", categories=["Craniotomy", "Mass"])


def test_category_subset_and_order():
    detector = SignDrivenDetector.from_preset("tiny", categories=["Enlarged ventricles", "Craniotomy"])
    assert detector.category_labels == ["Enlarged ventricles", "Craniotomy"]
    assert detector.prompt_categories.max().item() == 1
    with torch.no_grad():
        assert detector(batch(size=1)[0]).shape == (1, 2)


def test_train_mode_keeps_backbone_in_eval(detector):
    detector.train()
    assert detector.training and not detector.backbone.training
    detector.eval()


def test_deepcopy_runs_its_own_adapters_and_switch(detector):
    """A deep copy's hooks must call the copy's adapters and read the copy's switch: hooks that closed over the
    original's (the bug this guards against) give the copy the original's outputs whatever is done to the copy."""
    clone = copy.deepcopy(detector)
    images, _ = batch(size=2)
    with torch.no_grad():
        before = detector(images)
        assert torch.equal(clone(images), before)
        for parameter in clone.image_adapters.parameters():  # change the copy's image adapters only
            parameter.add_(0.5)
        moved = clone(images)
        assert not torch.allclose(moved, before, atol=1e-4), "the copy's hooks still run the original's adapters"
        assert torch.equal(detector(images), before), "changing the copy changed the original"
        # the other way round: the original's adapters changed after the copy leave the copy's outputs alone
        saved = [p.clone() for p in detector.image_adapters.parameters()]
        for parameter in detector.image_adapters.parameters():
            parameter.sub_(0.25)
        assert torch.equal(clone(images), moved), "the copy's hooks follow the original's adapters"
        for parameter, value in zip(detector.image_adapters.parameters(), saved):
            parameter.copy_(value)
        assert torch.equal(detector(images), before)
        clone.adapters_enabled = False  # the copy's switch, not the original's
        with detector.adapters_disabled():
            zero_shot = detector(images)
        assert not torch.allclose(zero_shot, before, atol=1e-4)
        assert torch.equal(clone(images), zero_shot), "the copy's hooks read the original's switch"
        assert torch.equal(detector(images), before)


def test_fallback_is_reported_by_evaluation_not_by_training_steps():
    """Sign selection is an inference step: a training forward (text adapter trained) does not warn about a category
    that falls back; switching to eval mode, which computes the inference text state, does (the random tiny model
    falls back for some categories)."""
    detector = SignDrivenDetector.from_preset("tiny")
    images, _ = batch(size=2)
    detector.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector(images, output="all", maps=False)["scores"].sum().backward()
    with pytest.warns(UserWarning, match="Sign selection kept no prompt"), torch.no_grad():
        detector.eval()
        detector(images)


def test_decision_rules_follow_the_calibration_and_operating_point():
    import numpy as np

    from sdmad_monai.calibration import OperatingPoint, fit_calibration

    detector = SignDrivenDetector.from_preset("tiny")
    assert detector.decision_rules() == [{"rule": "eq8"}] * 6
    detector.operating_point = OperatingPoint(0.9)
    assert all("no calibration" in rule["note"] for rule in detector.decision_rules())
    rng = np.random.default_rng(0)
    labels = rng.random((80, 6)) < 0.4
    detector.set_calibration(fit_calibration(rng.normal(0, 0.02, (80, 6)) + 0.03 * labels, labels,
                                             detector.category_labels))  # fmt: skip
    first = detector.decision_rules()
    assert [r["rule"] for r in first] == ["probability"] * 6
    first[0]["threshold"] = -1.0  # callers get copies
    assert detector.decision_rules()[0]["threshold"] > 0
    detector.operating_point = OperatingPoint()
    assert detector.decision_rules() == [{"rule": "eq8"}] * 6
