"""2D image and mask loading for BMAD folders."""

import numpy as np
import pytest
from PIL import Image

from sdmad_monai.transforms.planar import binarize_mask, load_image_2d


def test_load_image_2d_keeps_row_order_and_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image_2d(tmp_path / "g.png"), gray[None])  # no transposition
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "c.png")
    assert load_image_2d(tmp_path / "c.png").shape == (3, 3, 4)
    np.save(tmp_path / "a.npy", np.zeros((5, 6, 3)))
    assert load_image_2d(tmp_path / "a.npy").shape == (3, 5, 6)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_2d(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        load_image_2d(tmp_path / "missing.png")


def test_binarize_mask():
    np.testing.assert_array_equal(binarize_mask(np.array([[[0, 255, 100]]], np.uint8)), [[[0, 1, 0]]])
    np.testing.assert_array_equal(binarize_mask(np.array([[[0, 1, 1]]], np.uint8)), [[[0, 1, 1]]])
    np.testing.assert_array_equal(binarize_mask(np.array([[[0.2, 0.7]], [[0.9, 0.1]]])), [[[1, 1]]])
