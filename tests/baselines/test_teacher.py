"""Frozen teachers (sdmad_monai.baselines.teacher): the CLIP tower's block outputs as feature maps, frozen and in eval
mode whatever the caller does; the wide_resnet50_2 teacher's offline errors."""

from __future__ import annotations

import pytest
import torch

from sdmad_monai.baselines import CLIPTeacher, WideResNetTeacher, default_clip_layers
from sdmad_monai.networks.backbone import WeightsUnavailableError, image_blocks, load_clip


def test_default_layers():
    assert default_clip_layers(12) == [3, 6, 9] and default_clip_layers(24) == [6, 12, 18]
    assert default_clip_layers(6) == [2, 3, 4] and default_clip_layers(2) == [1]


def test_clip_teacher_gives_the_blocks_patch_tokens(teacher):
    images = torch.randn(2, 3, 64, 64)
    features = teacher(images)
    assert [tuple(f.shape) for f in features.scales] == [(2, 96, 8, 8)] * 3 and features.deepest.shape == (2, 96, 8, 8)
    # by hand: block 3's output tokens (batch first, class token first) at grid cell (row 1, col 2)
    model, _ = load_clip("sdmad-tiny", None, 64, seed=0)
    outputs = {}
    image_blocks(model)[2].register_forward_hook(lambda m, a, o: outputs.setdefault("b3", o))
    with torch.no_grad():
        model.visual(images)
    tokens = outputs["b3"]
    prefix = tokens.shape[1] - 64
    assert torch.allclose(features.scales[1][:, :, 1, 2], tokens[:, prefix + 1 * 8 + 2], atol=1e-6)


def test_clip_teacher_is_frozen(teacher):
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    with pytest.raises(ValueError, match="below the last"):
        CLIPTeacher(load_clip("sdmad-tiny", None, 64)[0], layers=[2, 6])


def test_wide_resnet_teacher_offline_errors(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="nothing is downloaded here"):
        WideResNetTeacher(tmp_path / "wide_resnet50_2.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match="is not a wide_resnet50_2 state dict"):
        WideResNetTeacher(wrong)
