"""load_clip: the tiny built-in config, seeded initialisation, image size, offline weights."""

import pytest
import torch

from sdmad_monai.networks import ShiftAdapter, WeightsUnavailableError, image_blocks, load_clip, text_blocks
from sdmad_monai.networks.adapter import attach_adapter, shift_interpolate


def test_tiny_model_is_small_and_seeded():
    model_a, tokenizer = load_clip("sdmad-tiny", seed=7)
    model_b, _ = load_clip("sdmad-tiny", seed=7)
    model_c, _ = load_clip("sdmad-tiny", seed=8)
    count = sum(p.numel() for p in model_a.parameters())
    assert 2_500_000 < count < 4_000_000
    state_a, state_b, state_c = model_a.state_dict(), model_b.state_dict(), model_c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)
    assert tokenizer(["a brain MRI"]).shape == (1, 32)
    assert len(image_blocks(model_a)) == 6 and len(text_blocks(model_a)) == 3


def test_seeded_load_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_clip("sdmad-tiny", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_force_image_size():
    model, _ = load_clip("sdmad-tiny", image_size=240)
    with torch.no_grad():
        assert model.encode_image(torch.zeros(1, 3, 240, 240)).shape == (1, 64)


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(
    "model_name, pretrained",
    [("ViT-B-16", "openai"), ("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", None)],
)
def test_offline_weights_give_one_clear_error(offline, model_name, pretrained, tmp_path):
    with pytest.raises(WeightsUnavailableError) as info:
        load_clip(model_name, pretrained, cache_dir=str(tmp_path))
    message = str(info.value)
    assert model_name in message
    assert "local file" in message and "pretrained='/path/to/" in message and "local-dir:" in message


def test_local_checkpoint_file_loads(tmp_path):
    model, _ = load_clip("sdmad-tiny", seed=3)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded, _ = load_clip("sdmad-tiny", pretrained=str(path), seed=99)  # seed irrelevant: weights come from file
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_unknown_tag_is_not_reported_as_offline():
    with pytest.raises(RuntimeError, match="not a known tag") as info:
        load_clip("sdmad-tiny", pretrained="no-such-tag")
    assert not isinstance(info.value, WeightsUnavailableError)


def test_shift_adapter_equations():
    adapter = ShiftAdapter(4, bottleneck=2, lam=0.25, activation="relu")
    with torch.no_grad():
        adapter.fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0]]))
        adapter.fc1.bias.zero_()
        adapter.fc2.weight.copy_(torch.tensor([[1.0, 0], [0, 1.0], [1.0, 1.0], [-1.0, 0]]))
        adapter.fc2.bias.zero_()
    x = torch.tensor([[2.0, 3.0, 5.0, 7.0]])
    # Eq. 1: relu(W1 x) = [2, 0]; relu(W2 [2, 0]) = [2, 0, 2, 0]
    assert adapter(x).tolist() == [[2.0, 0.0, 2.0, 0.0]]
    # Eq. 2: 0.25 * x + 0.75 * [2, 0, 2, 0]
    assert adapter.shift(x).tolist() == [[2.0, 0.75, 2.75, 1.75]]
    assert shift_interpolate(torch.tensor(4.0), torch.tensor(8.0), 0.5).item() == 6.0
    assert adapter.fc1.out_features == 2
    assert ShiftAdapter(1024).fc1.out_features == 768


def test_shift_adapter_validation():
    with pytest.raises(ValueError, match="lambda"):
        ShiftAdapter(8, lam=1.5)
    with pytest.raises(ValueError, match="activation"):
        ShiftAdapter(8, activation="swish")


def test_attach_adapter_applies_to_every_token_and_tuple_outputs():
    adapter = ShiftAdapter(3, lam=0.5)
    block = torch.nn.Identity()
    enabled = [True]
    handle = attach_adapter(block, adapter, lambda: enabled[0])
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        assert torch.allclose(block(x), adapter.shift(x))
        enabled[0] = False
        assert torch.equal(block(x), x)
    handle.remove()

    class TupleBlock(torch.nn.Module):
        def forward(self, x):
            return x, "attention"

    tuple_block = TupleBlock()
    attach_adapter(tuple_block, adapter, lambda: True)
    with torch.no_grad():
        out, extra = tuple_block(x)
    assert extra == "attention" and torch.allclose(out, adapter.shift(x))
