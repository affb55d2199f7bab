"""Overlay selection (top N, seeded sample of the other slices), box mapping and PNG writing."""

import csv
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from sdmad_monai.transforms.intensity import ResizeToSquare
from sdmad_monai.visualize import (
    BOX_COLOUR,
    OverlayItem,
    OverlaySelector,
    box_to_input_frame,
    overlay_file_name,
    save_overlay,
    write_overlays,
)


def _item(score, name="x", boxes=None):
    return OverlayItem(
        score=score,
        name=name,
        image=np.zeros((8, 8, 3), np.uint8),
        anomaly_map=np.full((8, 8), score, np.float32),
        mask=np.eye(8, dtype=bool),
        label=1,
        boxes=boxes,
    )


def _fill(selector, scores, built=None):
    for i, s in enumerate(scores):
        selector.offer(s, lambda i=i, s=s: (built.append(i) if built is not None else None) or _item(s, f"s{i}"))
    return selector


def test_selector_top_and_seeded_sample_build_only_kept():
    built = []
    scores = np.random.default_rng(0).random(200)
    a = _fill(OverlaySelector(top_n=3, random_n=4, seed=1), scores, built)
    assert [item.name for item in a.top()] == [f"s{i}" for i in np.argsort(-scores)[:3]]
    assert len(built) < 70  # arrays are built only for slices that were kept at some point (200 offered)
    assert len(set(built)) == len(built)  # and at most once each
    assert [i.name for i in a.sample()] == [i.name for i in _fill(OverlaySelector(3, 4, seed=1), scores).sample()]
    assert [i.name for i in a.sample()] != [i.name for i in _fill(OverlaySelector(3, 4, seed=2), scores).sample()]
    orders = [i.order for i in a.sample()]
    assert orders == sorted(orders)  # in the order offered


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [7, 30, 200])
def test_top_and_random_are_disjoint(seed, count):
    scores = np.random.default_rng(seed).random(count)
    selector = _fill(OverlaySelector(top_n=3, random_n=4, seed=seed), scores)
    top = {item.name for item in selector.top()}
    sample = [item.name for item in selector.sample()]
    assert top == {f"s{i}" for i in np.argsort(-scores)[:3]}
    assert not top & set(sample)
    assert len(sample) == len(set(sample)) == min(4, count - 3)
    if count == 7:  # only four slices are not in the top: all of them
        assert set(sample) == {f"s{i}" for i in range(7)} - top


def test_top_and_random_disjoint_when_the_sample_would_hold_top_slices():
    # increasing scores: every slice enters the top when offered, and the first ones fill the reservoir
    selector = _fill(OverlaySelector(top_n=2, random_n=2, seed=0), np.arange(5.0))
    assert [i.name for i in selector.top()] == ["s4", "s3"]
    assert {i.name for i in selector.sample()} <= {"s0", "s1", "s2"}
    assert len(selector.sample()) == 2


def test_sample_is_uniform_over_the_other_slices():
    scores = np.linspace(0, 1, 20)  # top 2 are s19, s18
    counts: Counter = Counter()
    runs = 1500
    for seed in range(runs):
        counts.update(i.name for i in _fill(OverlaySelector(top_n=2, random_n=3, seed=seed), scores).sample())
    assert "s19" not in counts and "s18" not in counts
    frequencies = np.array([counts[f"s{i}"] / runs for i in range(18)])
    assert frequencies == pytest.approx(np.full(18, 3 / 18), abs=0.045)


def test_top_only_and_random_only():
    scores = [0.3, 0.9, 0.1, 0.5]
    only_top = _fill(OverlaySelector(top_n=2, random_n=0), scores)
    assert [i.name for i in only_top.top()] == ["s1", "s3"] and only_top.sample() == []
    only_random = _fill(OverlaySelector(top_n=0, random_n=10), scores)
    assert only_random.top() == [] and [i.name for i in only_random.sample()] == ["s0", "s1", "s2", "s3"]
    with pytest.raises(ValueError, match=">= 0"):
        OverlaySelector(top_n=-1)


def test_write_overlays(tmp_path):
    selector = OverlaySelector(top_n=1, random_n=1, seed=0)
    selector.offer(0.9, lambda: _item(0.9, "vol/slice 3.png"))
    selector.offer(0.2, lambda: _item(0.2, "vol/slice 4.png"))
    rows = write_overlays(selector, tmp_path)
    assert [r["png"] for r in rows] == ["top/top_001_0.9000_vol_slice_3.png", "random/random_001_vol_slice_4.png"]
    assert Image.open(tmp_path / rows[0]["png"]).size[0] > 300
    with open(tmp_path / "index.csv", newline="") as handle:
        index = list(csv.reader(handle))
    assert index[0] == ["kind", "rank", "name", "score", "label", "png"]
    assert len(index) == 1 + len(rows) == 3  # one row per PNG
    for line, row in zip(index[1:], rows):
        assert line[:3] == [row["kind"], str(row["rank"]), row["name"]] and line[5] == row["png"]
        assert float(line[3]) == pytest.approx(row["score"], rel=1e-6) and line[4] == row["label"] == "abnormal"
    assert [float(line[3]) for line in index[1:]] == pytest.approx([0.9, 0.2], rel=1e-6)
    assert [line[2] for line in index[1:]] == ["vol/slice 3.png", "vol/slice 4.png"]
    assert overlay_file_name("top", 12, "a b.nii.gz", 0.5) == "top_012_0.5000_a_b.png"


def test_box_to_input_frame_values():
    # square 96 x 96 demo slice -> 64: scale 2/3, no padding
    assert box_to_input_frame([42, 34, 15, 24, "Enlarged ventricles"], (96, 96), 64) == pytest.approx(
        (28.0, 34 * 2 / 3, 10.0, 16.0, "Enlarged ventricles")
    )
    # 100 rows x 50 columns -> 64: scale 0.64, 64 x 32 resized, 16 columns of padding on the left
    assert box_to_input_frame((10, 20, 5, 10), (100, 50), 64) == pytest.approx((22.4, 12.8, 3.2, 6.4, ""))
    # fastMRI+ boxes were drawn on the up/down-flipped slice: row 20 counted from the bottom
    assert box_to_input_frame((10, 20, 5, 10, "x"), (100, 50), (64, 64), flipped_rows=True) == pytest.approx(
        (22.4, (100 - 20 - 10) * 0.64, 3.2, 6.4, "x")
    )
    with pytest.raises(ValueError, match="positive"):
        box_to_input_frame((0, 0, 1, 1), (0, 10), 64)


@pytest.mark.parametrize("flipped", [False, True])
def test_box_follows_resize_to_square(flipped):
    """A bright block inside a box stays inside the mapped box after the real ResizeToSquare."""
    height, width, size = 90, 60, 48
    x, y, w, h = 12, 30, 10, 20
    image = torch.zeros(1, height, width)
    rows = slice(height - y - h, height - y) if flipped else slice(y, y + h)  # where the block is on the slice
    image[0, rows, x : x + w] = 1.0
    resized = ResizeToSquare(size)(image)[0].numpy()
    bx, by, bw, bh, _ = box_to_input_frame((x, y, w, h), (height, width), size, flipped_rows=flipped)
    inside = resized[int(np.floor(by)) : int(np.ceil(by + bh)), int(np.floor(bx)) : int(np.ceil(bx + bw))].sum()
    assert inside / resized.sum() > 0.97
    strict = resized[
        int(np.ceil(by)) + 1 : int(np.floor(by + bh)) - 1, int(np.ceil(bx)) + 1 : int(np.floor(bx + bw)) - 1
    ]
    assert strict.min() > 0.99  # the inside of the mapped box is the block


def test_save_overlay_draws_boxes(tmp_path):
    image = np.full((32, 32, 3), 40, np.uint8)
    amap = np.zeros((32, 32), np.float32)
    assert BOX_COLOUR == "#00e5ff"

    def cyan_pixels(path):  # cyan-ish: nothing else in the figure (grey image, inferno map, black text) is
        r, g, b = np.moveaxis(np.asarray(Image.open(path).convert("RGB")).astype(int), -1, 0)
        return int(((r < 110) & (g > 140) & (b > 160)).sum())

    plain = save_overlay(tmp_path / "plain.png", image, amap, title="no box")
    boxed = save_overlay(tmp_path / "boxed.png", image, amap, title="one box", boxes=[(4.0, 6.0, 10.0, 8.0, "lesion")])
    assert cyan_pixels(plain) == 0
    assert cyan_pixels(boxed) > 200  # the rectangle on both panels and the label's background


@pytest.mark.parametrize("parts", [2, 3])
def test_selectors_of_parts_merge_into_the_selector_of_the_whole(parts):
    scores = np.random.default_rng(5).random(60)
    whole = _fill(OverlaySelector(top_n=3, random_n=4, seed=7), scores)
    pieces = []
    for rank in range(parts):  # a distributed sampler's split: rank, rank + parts, ...
        piece = OverlaySelector(top_n=3, random_n=4, seed=7)
        for i in range(rank, len(scores), parts):
            piece.offer(scores[i], lambda i=i: _item(scores[i], f"s{i}"), index=i)
        pieces.append(piece)
    merged, rest = pieces[0], pieces[1:]
    merged.merge(rest)
    assert [i.name for i in merged.top()] == [i.name for i in whole.top()]
    assert [i.name for i in merged.sample()] == [i.name for i in whole.sample()]
    assert merged.num_seen == whole.num_seen == 60
