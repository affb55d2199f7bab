"""ShiftAdapter (Eq. 1-2) against hand-written compositions, and attach_adapter's hook: on/off, tuples, removal,
deep copies."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sdmad_monai.networks import ShiftAdapter, attach_adapter, shift_interpolate


@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "gelu"])
def test_forward_is_eq1_with_the_submodules(activation):
    torch.manual_seed(0)
    adapter = ShiftAdapter(8, bottleneck=5, activation=activation)
    x = torch.randn(2, 3, 8)
    expected = adapter.act2(adapter.fc2(adapter.act1(adapter.fc1(x))))
    assert torch.equal(adapter(x), expected)
    # by hand for leaky_relu: alpha(W2 alpha(W1 x + b1) + b2)
    if activation == "leaky_relu":
        hidden = x @ adapter.fc1.weight.T + adapter.fc1.bias
        hidden = torch.where(hidden > 0, hidden, 0.01 * hidden)
        out = hidden @ adapter.fc2.weight.T + adapter.fc2.bias
        torch.testing.assert_close(adapter(x), torch.where(out > 0, out, 0.01 * out))


def test_shift_is_eq2():
    torch.manual_seed(1)
    adapter = ShiftAdapter(4, lam=0.25)
    x = torch.randn(3, 4)
    torch.testing.assert_close(adapter.shift(x), 0.25 * x + 0.75 * adapter(x))
    assert torch.equal(shift_interpolate(torch.ones(2), torch.zeros(2), 0.8), torch.full((2,), 0.8))


def test_adapter_gradients_reach_its_weights():
    adapter = ShiftAdapter(6)
    adapter.shift(torch.randn(4, 6)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())


def test_bad_settings_refused():
    with pytest.raises(ValueError, match="lambda must be in"):
        ShiftAdapter(4, lam=1.5)
    with pytest.raises(ValueError, match="Unknown adapter activation"):
        ShiftAdapter(4, activation="swish")


class TupleBlock(nn.Module):
    def forward(self, x):
        return x * 2, "extra"


def test_hook_on_off_tuple_and_remove():
    torch.manual_seed(2)
    adapter = ShiftAdapter(4)
    block = nn.Linear(4, 4)
    state = {"on": True}
    handle = attach_adapter(block, adapter, lambda: state["on"])
    x = torch.randn(2, 4)
    plain = nn.functional.linear(x, block.weight, block.bias)
    assert torch.equal(block(x), adapter.shift(plain))
    state["on"] = False
    assert torch.equal(block(x), plain)
    handle.remove()
    state["on"] = True
    assert torch.equal(block(x), plain)
    tuple_block = TupleBlock()
    attach_adapter(tuple_block, adapter, lambda: True)
    out, extra = tuple_block(x)
    assert extra == "extra" and torch.equal(out, adapter.shift(2 * x))


class Holder(nn.Module):
    """A block plus its adapter and switch, as the detector owns them."""

    def __init__(self):
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.adapter = ShiftAdapter(4)
        self.enabled = True
        attach_adapter(self.block, self.adapter, self.is_enabled)

    def is_enabled(self):
        return self.enabled


def test_deepcopy_hooks_use_the_copy_adapter_and_switch():
    torch.manual_seed(3)
    original = Holder()
    clone = copy.deepcopy(original)
    x = torch.randn(2, 4)
    before = original.block(x)
    with torch.no_grad():
        clone.adapter.fc2.bias.add_(1.0)  # change the copy's adapter only
    assert torch.equal(original.block(x), before)
    assert not torch.equal(clone.block(x), before)
    torch.testing.assert_close(
        clone.block(x), clone.adapter.shift(nn.functional.linear(x, clone.block.weight, clone.block.bias))
    )
    clone.enabled = False  # the copy's switch turns the copy's adapter off, not the original's
    assert torch.equal(clone.block(x), nn.functional.linear(x, clone.block.weight, clone.block.bias))
    assert torch.equal(original.block(x), before)
