"""D²4FAD (sdmad_monai.baselines.d24fad): learn-to-weight and the map by hand, the loss's terms, and learning on
generated images."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from sdmad_monai.baselines import (
    D24FAD,
    LearnToWeight,
    reconstruction_anomaly_map,
    scale_cosine_loss,
    score_images,
    support_weights,
    train_d24fad,
)


def test_support_weights_by_hand():
    query = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    keys = torch.tensor([[[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]])
    # logits (2 / sqrt(4), 0) = (1, 0): softmax = (e / (e + 1), 1 / (e + 1))
    expected = [math.e / (math.e + 1), 1 / (math.e + 1)]
    assert support_weights(query, keys)[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_learn_to_weight_with_identity_keys_by_hand():
    module = LearnToWeight(2)
    with torch.no_grad():
        module.key.weight.copy_(torch.eye(2)[:, :, None, None])
        module.key.bias.zero_()
    query = torch.tensor([[[[1.0]], [[0.0]]]])  # [1, 2, 1, 1]
    supports = torch.tensor([[[[[2.0]], [[0.0]]], [[[0.0]], [[3.0]]]]])  # [1, 2 supports, 2, 1, 1]
    reference, weights = module(query, supports)
    w = torch.softmax(torch.tensor([2.0, 0.0]) / math.sqrt(2), dim=0)
    assert weights[0].tolist() == pytest.approx(w.tolist(), abs=1e-6)
    assert reference[0, :, 0, 0].tolist() == pytest.approx([2.0 * float(w[0]), 3.0 * float(w[1])], abs=1e-6)


def test_map_score_and_loss_are_their_definitions(teacher, make_textures):
    model = D24FAD(teacher, 64, sigma=0).eval()
    query, supports = make_textures(2, seed=1), make_textures(3, seed=2)
    with torch.no_grad():
        out = model(query, supports)
        student = model.student(teacher(query).deepest)
        support_students = model.student(teacher(supports).deepest)
        references = [module(q, s[None].expand(2, *s.shape))[0]
                      for q, s, module in zip(student, support_students, model.weighting)]  # fmt: skip
        expected = reconstruction_anomaly_map(student, references, (64, 64), sigma=0)
        assert torch.allclose(out.anomaly_map, expected, atol=1e-5)
        assert torch.equal(out.image_score, out.anomaly_map.flatten(1).amax(1))
        assert out.support_weights.shape == (2, 3) and torch.allclose(out.support_weights.sum(1), torch.ones(2))
        # shared supports and the same supports given per query are the same computation
        per_query = model(query, supports[None].expand(2, *supports.shape))
        assert torch.allclose(per_query.anomaly_map, out.anomaly_map, atol=1e-5)
        loss = model.loss(query, supports[None].expand(2, *supports.shape))
        tsd = scale_cosine_loss(teacher(query).scales, student)
        assert float(loss.tsd) == pytest.approx(float(tsd), abs=1e-5)
        assert float(loss.total) == pytest.approx(float(loss.ssd + 0.1 * loss.tsd), abs=1e-6)


def test_learns_on_generated_images(teacher, make_textures):
    torch.manual_seed(0)
    model = D24FAD(teacher, 64)
    sets = [make_textures(24, seed=10), make_textures(24, seed=11)]  # two "other datasets" of normals
    supports = make_textures(2, seed=20)
    test = torch.cat([make_textures(32, seed=30), make_textures(32, seed=31, anomalous=True)])
    labels = [0] * 32 + [1] * 32
    before = roc_auc_score(labels, score_images(model, test, supports)[0].numpy())
    losses = train_d24fad(model, sets, shots=2, steps=60, batch_size=8, lr=1e-3, seed=0)
    after = roc_auc_score(labels, score_images(model, test, supports)[0].numpy())
    assert losses[-1] < losses[0]
    assert after > before + 0.1, (before, after)  # measured: 0.55 -> 0.72
