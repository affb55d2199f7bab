"""Activation checkpointing of the frozen image blocks: same loss and gradients, fewer saved activations, recomputation
only where the adapters need gradients, only in training; the switch round-trips through checkpoints."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from sdmad_monai.losses import SDMADLoss
from sdmad_monai.networks import SignDrivenDetector, image_blocks
from sdmad_monai.networks.checkpointing import (
    BlockCheckpointing,
    blocks_between_adapters,
)

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

TINY_LAYERS = [2, 3, 5, 6]  # the tiny preset's adapters (6 blocks)


@pytest.fixture(scope="module")
def plain():
    return SignDrivenDetector.from_preset("tiny")


@pytest.fixture(scope="module")
def checkpointed():
    return SignDrivenDetector.from_preset("tiny", activation_checkpointing=True)


def batch(size=3):
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(size, 3, 64, 64, generator=generator)
    labels = torch.zeros(size, 6)
    labels[0, 1] = labels[1, 3] = labels[1, 5] = 1.0
    return images, labels


def loss_and_gradients(detector):
    detector.train()
    detector.zero_grad(set_to_none=True)
    images, labels = batch()
    loss = SDMADLoss()(detector(images, output="all"), labels)
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in detector.named_parameters() if p.requires_grad}
    detector.zero_grad(set_to_none=True)
    detector.eval()
    return loss.detach(), gradients


def count_mlp_runs(detector):
    """Forward pre-hooks on each image block's MLP (called through ``__call__`` inside the block's forward, so they
    also fire when checkpointing recomputes the block in backward; a post-hook would not, as the recomputation stops
    once the last saved tensor is recovered); returns the counter and the handles."""
    counts: Counter = Counter()
    handles = []
    for index, block in enumerate(image_blocks(detector.backbone), start=1):

        def hook(module, args, index=index):
            counts[index] += 1

        handles.append(block.mlp.register_forward_pre_hook(hook))
    return counts, handles


def test_blocks_between_adapters():
    assert blocks_between_adapters(24, [6, 8, 18, 24]) == list(range(7, 25))  # the paper's ViT-L/14
    assert blocks_between_adapters(6, TINY_LAYERS) == [3, 4, 5, 6]
    assert blocks_between_adapters(6, [6]) == []
    assert blocks_between_adapters(12, []) == []


def test_same_loss_and_adapter_gradients(plain, checkpointed):
    loss, gradients = loss_and_gradients(plain)
    loss_ckpt, gradients_ckpt = loss_and_gradients(checkpointed)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert gradients.keys() == gradients_ckpt.keys()
    assert any(name.startswith("image_adapters.") for name in gradients)
    assert "text_adapter.fc1.weight" in gradients
    for name, gradient in gradients.items():
        assert gradient.abs().sum() > 0, name  # every adapter is on the backward path
        torch.testing.assert_close(gradients_ckpt[name], gradient, rtol=1e-6, atol=1e-9, msg=name)


def test_recomputes_only_blocks_after_the_first_adapter_and_only_in_training(checkpointed):
    counts, handles = count_mlp_runs(checkpointed)
    try:
        loss_and_gradients(checkpointed)
        # blocks 1-2 run once; 3-6 (after the first adapter, at block 2) once forward + once recomputed in backward
        assert dict(counts) == {1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: 2}
        counts.clear()
        with torch.no_grad():
            checkpointed(batch()[0])  # eval mode
        assert dict(counts) == {i: 1 for i in range(1, 7)}
        counts.clear()
        checkpointed.train()
        with torch.no_grad():  # training mode but no gradient: nothing to checkpoint
            checkpointed(batch()[0])
        assert dict(counts) == {i: 1 for i in range(1, 7)}
    finally:
        checkpointed.eval()
        for handle in handles:
            handle.remove()


def saved_activation_bytes(detector):
    """Bytes of the tensors autograd saves for backward in one training forward (checkpointed regions save theirs
    through their own hooks, so only what stays alive until backward is counted)."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    detector.train()
    images, labels = batch()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = SDMADLoss()(detector(images, output="all"), labels)
    loss.backward()
    detector.zero_grad(set_to_none=True)
    detector.eval()
    return total[0]


def test_checkpointing_saves_fewer_activations(plain, checkpointed):
    without = saved_activation_bytes(plain)
    with_checkpointing = saved_activation_bytes(checkpointed)
    # blocks 3-6 of 6 no longer keep their internals (their inputs are kept by the checkpoints instead)
    assert with_checkpointing < 0.6 * without, (with_checkpointing, without)


def test_inference_unchanged(plain, checkpointed):
    images, _ = batch()
    plain.eval()
    checkpointed.eval()
    with torch.no_grad():
        assert torch.equal(checkpointed(images), plain(images))


def test_switch_in_description_and_checkpoint_round_trip(plain, checkpointed, tmp_path):
    assert checkpointed.description()["config"]["activation_checkpointing"] is True
    assert plain.description()["config"]["activation_checkpointing"] is False
    path = checkpointed.save(tmp_path / "ckpt.pt")
    loaded = SignDrivenDetector.load(path)
    assert loaded.config["activation_checkpointing"] is True
    assert loaded._checkpointing is not None
    loaded.train()
    assert loaded._checkpointing.active
    loaded.eval()
    assert not loaded._checkpointing.active
    # a runtime setting, not an architecture key: the adapters load onto a detector without checkpointing
    plain_copy = copy.deepcopy(plain)
    plain_copy.load_state_dict(SignDrivenDetector.read_checkpoint(path))
    for name, parameter in checkpointed.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(dict(plain_copy.named_parameters())[name], parameter), name


def test_deepcopy_checkpoints_its_own_blocks(checkpointed):
    clone = copy.deepcopy(checkpointed)
    for original, copied in zip(checkpointed._checkpointing.blocks, clone._checkpointing.blocks):
        assert copied is not original
        assert copied.forward.__self__ is copied
    with torch.no_grad():
        for parameter in image_blocks(clone.backbone)[-1].parameters():
            parameter.mul_(0.5)  # change the clone only
    loss, _ = loss_and_gradients(checkpointed)
    loss_clone, _ = loss_and_gradients(clone)
    assert not torch.equal(loss, loss_clone)


def test_install_twice_refused_and_remove_restores():
    block = torch.nn.Linear(3, 3)
    checkpointing = BlockCheckpointing([block])
    with pytest.raises(ValueError, match="already has an instance-level forward"):
        BlockCheckpointing([block])
    checkpointing.set_active(True)
    x = torch.randn(2, 3, requires_grad=True)
    expected = torch.nn.functional.linear(x, block.weight, block.bias)
    assert torch.equal(block(x), expected)
    checkpointing.remove()
    assert "forward" not in vars(block)
    assert torch.equal(block(x), expected)
