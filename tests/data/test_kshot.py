"""Tests for k-shot support selection (sdmad_monai.data.kshot)."""

from __future__ import annotations

import random

import pytest

from sdmad_monai.data import load_k_shot, save_k_shot, select_k_shot
from sdmad_monai.data.kshot import hold_out_volumes

CATS = ("A", "B", "C")


def _items():
    labels = {
        "v0": [1, 1, 0],  # positive for A and B
        "v1": [1, 0, 0],
        "v2": [0, 1, 0],
        "v3": [0, 0, 1],
        "v4": [0, 0, 1],
        "v5": [1, 0, 1],
        "n0": [0, 0, 0],
        "n1": [0, 0, 0],
        "n2": [0, 0, 0],
        "n3": [0, 0, 0],
    }
    items = [
        {"image": f"{k}.nii.gz", "file": k, "slice": 0, "label": [float(v) for v in lab]} for k, lab in labels.items()
    ]
    items.append({"image": "v0.nii.gz", "file": "v0", "slice": 5, "label": [0.0, 0.0, 0.0]})  # other slice of v0
    return items


def _positives(support, j):
    return sum(1 for it in support if it["label"][j] > 0)


def test_k_shot_counts_and_multilabel_greedy():
    for seed in range(20):
        split = select_k_shot(_items(), 1, CATS, seed=seed)
        assert all(_positives(split.support, j) >= 1 for j in range(3))
        normals = [it for it in split.support if not any(it["label"])]
        assert len(normals) == 3  # k normals per category
        abnormal = [it for it in split.support if any(it["label"])]
        assert len(abnormal) <= 3
        # an item positive for several categories counts for each: no category has a redundant extra pick
        assert len({it["image"] + str(it["slice"]) for it in split.support}) == len(split.support)


def test_multilabel_item_counts_for_each_category():
    # "ab" is the only A positive and also a B positive: once chosen for A, B needs no further item
    items = [
        {"file": "ab", "label": [1.0, 1.0, 0.0]},
        {"file": "b", "label": [0.0, 1.0, 0.0]},
        {"file": "c", "label": [0.0, 0.0, 1.0]},
        {"file": "n0", "label": [0.0, 0.0, 0.0]},
        {"file": "n1", "label": [0.0, 0.0, 0.0]},
    ]
    for seed in range(10):
        split = select_k_shot(items, 1, CATS, seed=seed, num_normal=1)
        assert sorted(it["file"] for it in split.support if any(it["label"])) == ["ab", "c"]
        assert "b" in {it["file"] for it in split.remaining}


def test_k_shot_seeded_and_repeatable(tmp_path):
    a = select_k_shot(_items(), 1, CATS, seed=3)
    b = select_k_shot(_items(), 1, CATS, seed=3)
    assert a.support == b.support and a.remaining == b.remaining
    path = save_k_shot(a, tmp_path / "splits" / "1shot.json")
    c = load_k_shot(path)
    assert c.support == a.support and c.remaining == a.remaining and c.k == 1 and c.seed == 3 and c.categories == CATS
    seeds = {tuple(it["file"] for it in select_k_shot(_items(), 1, CATS, seed=s).support) for s in range(10)}
    assert len(seeds) > 1  # the seed matters


def test_k_shot_remaining_excludes_support_volumes():
    split = select_k_shot(_items(), 2, CATS, seed=0, num_normal=2)
    chosen = {it["file"] for it in split.support}
    assert all(it["file"] not in chosen for it in split.remaining)
    # with group_key=None only the chosen items themselves leave the pool
    split2 = select_k_shot(_items(), 2, CATS, seed=0, num_normal=2, group_key=None)
    assert len(split2.support) + len(split2.remaining) == 11


def test_four_shot_fixed_example():
    items = [{"file": f"p{i}", "label": [1.0]} for i in range(5)] + [
        {"file": f"n{i}", "label": [0.0]} for i in range(6)
    ]
    split = select_k_shot(items, 4, ("X",), seed=0)
    assert sum(it["label"][0] for it in split.support) == 4.0
    assert len(split.support) == 8 and len(split.remaining) == 3


def test_k_shot_errors(tmp_path):
    with pytest.raises(ValueError, match=r"fewer than k=3 positive items for: \{'B': 2\}"):
        select_k_shot(_items(), 3, CATS)
    with pytest.raises(ValueError, match="6 normal items requested, only 5 available"):
        select_k_shot(_items(), 1, CATS, num_normal=6)
    with pytest.raises(ValueError, match=r"item 0 \(x\) has label=\[1\.0\]; expected 3 values"):
        select_k_shot([{"image": "x", "file": "x", "label": [1.0]}], 1, CATS)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        select_k_shot(_items(), 0, CATS)
    (tmp_path / "bad.json").write_text('{"k": 1}')
    with pytest.raises(ValueError, match=r"missing key\(s\) \['seed', 'categories'"):
        load_k_shot(tmp_path / "bad.json")


def test_hold_out_volumes_keeps_volumes_whole_and_order():
    items = [{"file": f"v{i % 5}", "slice": i} for i in range(15)]
    held_out, kept = hold_out_volumes(items, 0.4, seed=3)
    assert {i["file"] for i in held_out}.isdisjoint({i["file"] for i in kept})
    assert len({i["file"] for i in held_out}) == 2
    assert sorted(held_out + kept, key=lambda i: i["slice"]) == items
    assert [i["slice"] for i in held_out] == sorted(i["slice"] for i in held_out)  # input order kept
    assert held_out[0] is items[held_out[0]["slice"]]  # not copied
    # the seeded draw: sorted volumes shuffled by random.Random(seed)
    volumes = sorted({i["file"] for i in items})
    random.Random(3).shuffle(volumes)
    assert {i["file"] for i in held_out} == set(volumes[:2])
    # at least one volume on each side once fraction > 0; none held out at 0
    assert len({i["file"] for i in hold_out_volumes(items, 0.01)[0]}) == 1
    assert len({i["file"] for i in hold_out_volumes(items, 0.99)[1]}) == 1
    assert hold_out_volumes(items, 0.0)[0] == []
