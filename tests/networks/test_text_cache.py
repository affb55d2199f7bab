"""ScoringCache: the cached Eq. 7 / Eq. 8 parts give exactly what category_scores and anchor_predictions compute from
scratch; entries are reused, refreshed on in-place changes, keyed by keep's value, and never hold autograd graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdmad_monai.functional import (
    anchor_predictions,
    anchor_predictions_from_similarities,
    category_scores,
    category_scores_from_similarities,
)
from sdmad_monai.networks.text_cache import ScoringCache


def prompts(seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(7, 5, generator=generator)
    categories = torch.tensor([-1, -1, 0, 0, 1, 1, 1])
    keep = torch.tensor([True, True, True, False, True, True, False])
    anchor = F.normalize(features[:2].mean(0), dim=0)
    return features, categories, keep, anchor


def test_cached_scoring_equals_functions_bitwise():
    features, categories, keep, anchor = prompts()
    images = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    scoring = ScoringCache().get(features, categories, keep, anchor, 2)
    similarities = F.normalize(images, dim=-1) @ scoring.unit_features.T
    assert torch.equal(
        category_scores_from_similarities(similarities, scoring.membership),
        category_scores(images, features, categories, keep, 2),
    )
    anchor_similarity = F.normalize(images, dim=-1) @ scoring.unit_anchor
    assert torch.equal(
        anchor_predictions_from_similarities(similarities, scoring.membership, anchor_similarity),
        anchor_predictions(images, features, categories, keep, anchor, 2),
    )
    # Eq. 7 by hand: category 0 is prompt 2 only, category 1 is prompts 4 and 5
    cosine = F.normalize(images, dim=-1) @ F.normalize(features, dim=-1).T
    expected = torch.stack([cosine[:, 2], cosine[:, 4:6].amax(dim=1)], dim=1)
    assert torch.equal(category_scores_from_similarities(similarities, scoring.membership), expected)


def test_entries_reused_and_refreshed():
    features, categories, keep, anchor = prompts()
    cache = ScoringCache(size=2)
    first = cache.get(features, categories, keep, anchor, 2)
    assert cache.get(features, categories, keep.clone(), anchor, 2) is first  # equal keep, other tensor
    all_kept = cache.get(features, categories, torch.ones_like(keep), anchor, 2)
    assert all_kept is not first and bool(all_kept.membership[0, 3])
    with torch.no_grad():
        features.mul_(2.0)  # in place: the version counter changes
    refreshed = cache.get(features, categories, keep, anchor, 2)
    assert refreshed is not first
    assert len(cache._entries) == 2  # oldest evicted
    assert cache.get(features.clone(), categories, keep, anchor, 2) is not refreshed  # another tensor


def test_features_with_grad_are_not_cached():
    features, categories, keep, anchor = prompts()
    features.requires_grad_(True)
    cache = ScoringCache()
    scoring = cache.get(features, categories, keep, anchor, 2)
    assert scoring.unit_features.requires_grad and not cache._entries
    scoring.unit_features.sum().backward()
    assert features.grad is not None


def test_category_without_kept_prompt_refused():
    features, categories, keep, anchor = prompts()
    keep = keep.clone()
    keep[2] = False
    with pytest.raises(ValueError, match=r"Categories \[0\] have no kept prompt"):
        ScoringCache().get(features, categories, keep, anchor, 2)
