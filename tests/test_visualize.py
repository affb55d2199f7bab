"""Overlay selection (top N, seeded reservoir sample) and PNG writing."""

import numpy as np
from PIL import Image

from sdmad_monai.visualize import (
    OverlayItem,
    OverlaySelector,
    overlay_file_name,
    write_overlays,
)


def _item(score, name="x"):
    return OverlayItem(score=score, name=name, image=np.zeros((8, 8, 3), np.uint8),
                       anomaly_map=np.full((8, 8), score, np.float32), mask=np.eye(8, dtype=bool), label=1)


def test_selector_top_and_seeded_sample_build_only_kept():
    built = []
    scores = np.random.default_rng(0).random(200)

    def run(seed):
        selector = OverlaySelector(top_n=3, random_n=4, seed=seed)
        for i, s in enumerate(scores):
            selector.offer(s, lambda i=i, s=s: built.append(i) or _item(s, f"s{i}"))
        return selector

    a = run(1)
    assert [item.name for item in a.top()] == [f"s{i}" for i in np.argsort(-scores)[:3]]
    assert len(built) < 60  # arrays are built only for slices that were kept at some point
    assert [i.name for i in a.sample()] == [i.name for i in run(1).sample()]
    assert [i.name for i in a.sample()] != [i.name for i in run(2).sample()]


def test_write_overlays(tmp_path):
    selector = OverlaySelector(top_n=1, random_n=1, seed=0)
    selector.offer(0.9, lambda: _item(0.9, "vol/slice 3.png"))
    rows = write_overlays(selector, tmp_path)
    assert [r["png"] for r in rows] == ["top/top_001_0.9000_vol_slice_3.png", "random/random_001_vol_slice_3.png"]
    assert Image.open(tmp_path / rows[0]["png"]).size[0] > 300
    assert (tmp_path / "index.csv").read_text().startswith("kind,rank,name,score,label,png")
    assert overlay_file_name("top", 12, "a b.nii.gz", 0.5) == "top_012_0.5000_a_b.png"
