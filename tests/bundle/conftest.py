"""Fixtures shared by the bundle tests."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

# Two runs of the same inference in one process agree to the bit on most CPUs, but not on every CPU of the CI's
# kind (one CI run saw slices.csv differ in the 6th digit between the evaluator and infer_volumes): compare numbers
# to this tolerance and rendered figures pixel by pixel, and name the file that differs.
ABS_TOLERANCE = 1e-5
PNG_LEVELS = 8  # of 255: a colour-map step where a value sits on a bin edge
PNG_SHARE = 0.005  # at most this share of a figure's pixels may differ at all


def _close(a, b, where: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        try:
            for k, (x, y) in enumerate(zip(a, b)):
                _close(x, y, f"{where}[{k}]")
        except AssertionError as error:
            if len(repr(a)) + len(repr(b)) > 600:
                raise
            raise AssertionError(f"{error}\n  {where}: {a!r}\n  expected: {b!r}") from None
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} != {b!r}"
        assert math.isclose(a, b, rel_tol=0, abs_tol=ABS_TOLERANCE), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _number(cell: str):
    try:
        return float(cell) if any(c in cell for c in ".eE") or cell.lower() in {"nan", "inf"} else cell
    except ValueError:
        return cell


def _same_file(path: Path, expected: Path, name: str) -> None:
    data, wanted = path.read_bytes(), expected.read_bytes()
    if data == wanted:
        return
    if name.endswith(".json"):
        _close(json.loads(data), json.loads(wanted), name)
    elif name.endswith(".csv"):
        rows, rows_wanted = (list(csv.reader(io.StringIO(d.decode()))) for d in (data, wanted))
        _close([[_number(c) for c in r] for r in rows], [[_number(c) for c in r] for r in rows_wanted], name)
    elif name.endswith(".nii.gz"):
        import nibabel as nib
        import numpy as np

        image, image_wanted = nib.load(path), nib.load(expected)
        assert np.array_equal(image.affine, image_wanted.affine), f"{name}: affines differ"
        a, b = np.asarray(image.dataobj), np.asarray(image_wanted.dataobj)
        assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape}"
        worst = float(np.max(np.abs(a.astype(np.float64) - b)))
        assert worst <= ABS_TOLERANCE, f"{name}: voxels differ by up to {worst:.3g}"
    elif name.endswith(".png"):
        import numpy as np
        from PIL import Image

        a, b = (np.asarray(Image.open(p).convert("RGBA"), dtype=np.int16) for p in (path, expected))
        assert a.shape == b.shape, f"{name}: size {a.shape} != {b.shape}"
        differ = np.abs(a - b).max(axis=-1)
        share = float(np.mean(differ > 0))
        assert differ.max() <= PNG_LEVELS and share <= PNG_SHARE, (
            f"{name}: {share:.2%} of the pixels differ, by up to {int(differ.max())} levels"
        )
    else:
        raise AssertionError(f"{name}: the bytes differ")


def check_same_outputs(folder: Path, expected: Path) -> None:
    """The same files under both folders, each with the same content up to float rounding (:data:`ABS_TOLERANCE`;
    figures compared pixel by pixel); a failure names the file."""
    names = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    wanted = {str(p.relative_to(expected)) for p in expected.rglob("*") if p.is_file()}
    assert names == wanted, f"{folder}: extra {sorted(names - wanted)}, missing {sorted(wanted - names)}"
    for name in sorted(names):
        _same_file(folder / name, expected / name, name)


@pytest.fixture(scope="session")
def assert_same_outputs():
    """:func:`check_same_outputs`, for the test modules (they cannot import conftest)."""
    return check_same_outputs
