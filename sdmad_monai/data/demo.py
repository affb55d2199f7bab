"""Deterministic demo dataset: real brain anatomy (MNI152 template shipped in nilearn) with drawn fastMRI+ signs.

``generate_demo_dataset(out_dir, num_volumes=40, seed=0)`` writes::

    out_dir/images/{stem}.nii.gz     16 axial slices of 96 x 96 (2.2 x 2.2 x 5 mm), int16, RAS affine
    out_dir/brain.csv                fastMRI+ format: file,slice,study_level,x,y,width,height,label
    out_dir/brain_file_list.csv      one stem per line, no header
    out_dir/manifest.json            parameters + sha256 of every file (used for idempotent reuse)

so :func:`sdmad_monai.data.build_fastmri_datalist` (``suffix=".nii.gz"``) builds the demo datalist exactly as for
real data.

* Anatomy: the MNI152 T1 template of ``nilearn.datasets.load_mni152_template`` (the 1 mm file shipped in the
  nilearn wheel, read offline with nibabel; skull-stripped) resampled per subject
  with a random rotation (up to 8 deg in-plane, 4 deg out of plane), scale (0.92-1.08) and translation (4 mm), an
  intensity scale (0.85-1.15), a linear bias field (+-8 %) and Gaussian noise; a synthetic CSF/skull/scalp rim is
  added around the brain. Slices cover z = -10 mm (slice 0) to z = +65 mm (slice 15) in MNI space.
* Signs, drawn only on the slices where the category is labelled (so the labels match what is visible):
  Craniotomy = gap in the skull/scalp rim over a sector; Posttreatment change = dark resection cavity with a bright
  rim; Nonspecific lesion = 1-3 focal bright blobs; Dural thickening = a thick bright band along the inner brain
  surface over a sector; Enlarged ventricles = large dark central ventricles (slices 3-11); Small vessel chronic
  white matter ischemic change = bright periventricular dots on slice 0 only, labelled by a study-level row
  (``Yes``, slice 0, empty box) exactly as fastMRI+ annotates the Global label, so that the default
  ``study_level="as_annotated"`` labels match the image content. Every labelled volume shows each of its signs on
  at least one of the default slices 0, 5, 10. About 30 % of volumes are normal (half of them carry a study-level
  ``Normal for age`` row, as in fastMRI+); abnormal volumes have one category, sometimes two.
* Boxes ``x, y, width, height`` are pixel coordinates (x = column, y = row) of the axial slice in the display
  orientation of :class:`sdmad_monai.transforms.ExtractSlices` (rows anterior -> posterior, columns right -> left).
* Deterministic: the same seed and parameters give byte-identical files (gzip with mtime 0). Files are built in a
  temporary sibling folder and moved into place at the end, so an interrupted run leaves no half dataset; a
  complete dataset with the same parameters (checked against the manifest hashes) is reused.

Size: one generator; most of its length is the drawing of the six signs, one block per category, kept
together so that the labels and what is drawn cannot drift apart.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import nibabel as nib
import numpy as np
from scipy import ndimage

from sdmad_monai.data.fastmri import FASTMRI_BRAIN_CATEGORIES, FASTMRI_CSV_COLUMNS
from sdmad_monai.utils import atomic_write_bytes, atomic_write_json, current_umask

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

__all__ = [
    "DEMO_SUFFIX",
    "DEMO_SHAPE",
    "DEMO_SPACING",
    "DEMO_STYLE",
    "SignStyle",
    "assign_categories",
    "demo_affine",
    "generate_demo_dataset",
    "load_template",
    "render_volume",
    "subject_fingerprint",
]

DEMO_SUFFIX = ".nii.gz"
DEMO_SHAPE = (96, 96, 16)
DEMO_SPACING = (2.2, 2.2, 5.0)
_GENERATOR_VERSION = 2
_Z0 = -10.0  # MNI z (mm) of slice 0
_CENTRE = np.array([0.0, -18.0, 20.0])  # rotation centre in MNI space (mm)

CRANIOTOMY, POSTTREATMENT, LESION, DURAL, VENTRICLES, SMALL_VESSEL = FASTMRI_BRAIN_CATEGORIES


def demo_affine() -> np.ndarray:
    nx, ny, _ = DEMO_SHAPE
    aff = np.diag([*DEMO_SPACING, 1.0])
    aff[:3, 3] = [-(nx - 1) / 2 * DEMO_SPACING[0], -18.0 - (ny - 1) / 2 * DEMO_SPACING[1], _Z0]
    return aff


def _rotation(rng: np.random.Generator) -> np.ndarray:
    ax, ay, az = np.deg2rad([rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(-8, 8)])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _subject_volume(template: np.ndarray, t_aff: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Resample the template on the demo grid through a random similarity transform; returns float [X, Y, Z]."""
    aff = demo_affine()
    rot = _rotation(rng)
    scale = rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, size=3)
    shift = rng.uniform(-4, 4, size=3)
    # demo voxel -> world -> MNI world (rotation/scale about _CENTRE, shift) -> template voxel, composed linearly
    t_inv = np.linalg.inv(t_aff[:3, :3])
    lin = t_inv @ rot @ np.diag(1.0 / scale) @ aff[:3, :3]
    off = t_inv @ (rot @ ((aff[:3, 3] - _CENTRE) / scale) + _CENTRE + shift - t_aff[:3, 3])
    vol = ndimage.affine_transform(template, lin, off, output_shape=DEMO_SHAPE, order=1, mode="constant", cval=0.0)
    return vol.astype(np.float64)


def subject_fingerprint(template: np.ndarray, t_aff: np.ndarray, key: Sequence[int]) -> str:
    """sha256 of the anatomy drawn from the random stream ``default_rng(key)`` (the subject before any sign).

    The demo dataset's volume ``i`` uses ``key = [seed, i]``; two volumes with equal fingerprints are the same
    subject whatever signs or style were drawn on them.
    """
    volume = _subject_volume(template, t_aff, np.random.default_rng(list(key)))
    return hashlib.sha256(np.ascontiguousarray(volume).tobytes()).hexdigest()


def load_template() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 1 mm template shipped inside the nilearn wheel, scaled to [0, 1] and lightly smoothed.

    This is the file behind ``nilearn.datasets.load_mni152_template`` (which rescales it the same way); it is read
    with nibabel directly to avoid importing ``nilearn.datasets`` (and scikit-learn) just for one file.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ImportError("the demo dataset needs the 'nilearn' package (it ships the MNI152 template).")
    path = Path(spec.origin).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"MNI152 template not found inside nilearn at {path}.")
    img = cast("SpatialImage", nib.load(path))  # a NIfTI file: nib.load is typed as the FileBasedImage base
    data = np.asarray(img.dataobj, dtype=np.float32)
    data /= data.max()
    # anti-alias before sampling the 1 mm template on a 2.2 mm grid
    data = ndimage.gaussian_filter(data, sigma=0.8).astype(np.float32)
    return data, np.asarray(img.affine, dtype=np.float64)


def _head(vol: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add a CSF/skull/scalp rim per slice; return (volume, brain mask, outside distance in px)."""
    mask = vol > 0.15
    d_out = np.zeros_like(vol)
    for z in range(vol.shape[2]):
        m = ndimage.binary_fill_holes(mask[..., z])
        mask[..., z] = m
        if not m.any():
            continue
        d = ndimage.distance_transform_edt(~m)
        d_out[..., z] = d
        sl = vol[..., z]
        sl[(d > 0) & (d <= 1.0)] = 0.12  # CSF
        sl[(d > 1.0) & (d <= 3.0)] = 0.04  # bone
        sl[(d > 3.0) & (d <= 5.0)] = 0.75  # scalp
    return vol, mask, d_out


def _polar(mask2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cx, cy = np.argwhere(mask2d).mean(axis=0)
    x, y = np.meshgrid(np.arange(mask2d.shape[0]), np.arange(mask2d.shape[1]), indexing="ij")
    return np.arctan2(y - cy, x - cx), np.hypot(x - cx, y - cy), np.array([cx, cy])


def _in_sector(theta: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (theta - centre)))) <= half_width


def _box(sign: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x=col, y=row, width, height) of a 2D [X, Y] mask in the ExtractSlices axial display frame."""
    xs, ys = np.nonzero(sign)
    nx, ny = sign.shape
    cols = nx - 1 - xs  # columns run right -> left (decreasing x)
    rows = ny - 1 - ys  # rows run anterior -> posterior (decreasing y)
    return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


@dataclass(frozen=True)
class SignStyle:
    """How the generator draws the signs: a number is used as is, a ``(low, high)`` pair is drawn per volume or sign.

    :data:`DEMO_STYLE` is the demo dataset's; the demo backbone's pretraining corpus
    (:mod:`sdmad_monai.data.report_corpus`) draws its volumes in a shifted style, so that the few-shot step has
    something to adapt, as general CLIP has on radiology.

    Attributes:
        bright: sign brightness as a multiple of the brain's 95th intensity percentile (lesions, rims, dura, dots).
        dark: cavity / ventricle intensity, same unit.
        craniotomy_half_width: half angle (degrees) of the skull gap.
        cavity_radius: resection cavity radius (voxels).
        cavity_rim: rim width around the cavity (voxels).
        lesion_radius: focal lesion radius (voxels).
        dural_thickness: thickness of the dural band (voxels).
        ventricle_growth: ventricle size factor.
        vessel_dots: ``(low, high)`` number of small-vessel dots (upper bound exclusive).
    """

    bright: float | tuple[float, float] = 1.3
    dark: float | tuple[float, float] = 0.1
    craniotomy_half_width: float | tuple[float, float] = 28.0
    cavity_radius: float | tuple[float, float] = (5.0, 7.0)
    cavity_rim: float | tuple[float, float] = 2.0
    lesion_radius: float | tuple[float, float] = (2.2, 3.2)
    dural_thickness: float | tuple[float, float] = 2.5
    ventricle_growth: float | tuple[float, float] = (1.0, 1.3)
    vessel_dots: tuple[int, int] = (14, 22)


#: The demo dataset's sign style.
DEMO_STYLE = SignStyle()


def _value(rng: np.random.Generator, spec: float | tuple[float, float]) -> float:
    """A style value: fixed numbers draw nothing (so the demo's random stream does not depend on the style type)."""
    return float(rng.uniform(*spec)) if isinstance(spec, tuple) else float(spec)


def _draw_signs(vol, mask, d_out, cats, rng, style: SignStyle = DEMO_STYLE) -> list[tuple[int, tuple | None, str]]:
    """Draw the signs of ``cats``; returns fastMRI+ rows (slice, box or None for study-level, label)."""
    rows: list[tuple[int, tuple | None, str]] = []
    nz = vol.shape[2]
    wm = float(np.percentile(vol[mask], 95))
    bright, dark = _value(rng, style.bright) * wm, _value(rng, style.dark) * wm

    def d_in(z):
        return ndimage.distance_transform_edt(mask[..., z])

    for cat in cats:
        if cat == CRANIOTOMY:
            c = int(rng.choice([5, 10]))
            theta0 = rng.uniform(-np.pi, np.pi)
            half_width = np.deg2rad(_value(rng, style.craniotomy_half_width))
            for z in range(max(0, c - 3), min(nz, c + 4)):
                if not mask[..., z].any():
                    continue
                theta, _, _ = _polar(mask[..., z])
                sign = (d_out[..., z] > 0) & (d_out[..., z] <= 5.0) & _in_sector(theta, theta0, half_width)
                if sign.sum() < 4:
                    continue
                vol[..., z][sign] = 0.0
                rows.append((z, _box(sign), cat))
        elif cat == POSTTREATMENT:
            c = int(rng.choice([5, 10]))
            inside = np.argwhere(d_in(c) >= 12)
            cx, cy = inside[rng.integers(len(inside))]
            radius = _value(rng, style.cavity_radius)
            rim_width = _value(rng, style.cavity_rim)
            dz = DEMO_SPACING[2] / DEMO_SPACING[0]
            x, y = np.meshgrid(np.arange(vol.shape[0]), np.arange(vol.shape[1]), indexing="ij")
            for z in range(nz):
                r2 = radius**2 - ((z - c) * dz) ** 2
                if r2 < 4.0:
                    continue
                r = np.sqrt(r2)
                dist = np.hypot(x - cx, y - cy)
                cavity, rim = dist <= r, (dist > r) & (dist <= r + rim_width)
                vol[..., z][rim & mask[..., z]] = bright
                vol[..., z][cavity] = dark
                rows.append((z, _box(cavity | (rim & mask[..., z])), cat))
        elif cat == LESION:
            n = int(rng.integers(1, 4))
            x, y = np.meshgrid(np.arange(vol.shape[0]), np.arange(vol.shape[1]), indexing="ij")
            for j in range(n):
                z = int(rng.choice([0, 5, 10])) if j == 0 else int(rng.integers(0, 13))
                inside = np.argwhere(d_in(z) >= 6)
                if len(inside) == 0:
                    continue
                cx, cy = inside[rng.integers(len(inside))]
                r = _value(rng, style.lesion_radius)
                blob = np.hypot(x - cx, y - cy) <= r
                vol[..., z][blob] = bright
                rows.append((z, _box(blob), cat))
        elif cat == DURAL:
            c = int(rng.choice([0, 5, 10]))
            theta0 = rng.uniform(-np.pi, np.pi)
            thickness = _value(rng, style.dural_thickness)
            for z in range(max(0, c - 2), min(nz, c + 3)):
                if not mask[..., z].any():
                    continue
                theta, _, _ = _polar(mask[..., z])
                di = d_in(z)
                sign = (di > 0) & (di <= thickness) & _in_sector(theta, theta0, np.deg2rad(40))
                if sign.sum() < 4:
                    continue
                vol[..., z][sign] = bright
                rows.append((z, _box(sign), cat))
        elif cat == VENTRICLES:
            grow = _value(rng, style.ventricle_growth)
            off = rng.uniform(-1.5, 1.5, size=2)
            for z in range(3, min(nz, 12)):
                _, _, centre = _polar(mask[..., z])
                cx, cy = centre + off
                size = grow * (1.0 - 0.06 * abs(z - 7))
                x, y = np.meshgrid(np.arange(vol.shape[0]), np.arange(vol.shape[1]), indexing="ij")
                sign = np.zeros(mask.shape[:2], bool)
                for side in (-1, 1):
                    ex, ey = cx + side * 4.5 * size, cy - 1.0
                    sign |= ((x - ex) / (3.5 * size)) ** 2 + ((y - ey) / (12.0 * size)) ** 2 <= 1.0
                sign &= mask[..., z]
                vol[..., z][sign] = dark
                rows.append((z, _box(sign), cat))
        elif cat == SMALL_VESSEL:
            z = 0
            _, rad, _ = _polar(mask[..., z])
            cand = np.argwhere((rad >= 6) & (rad <= 16) & (d_in(z) >= 3))
            picks = cand[
                rng.choice(len(cand), size=min(len(cand), int(rng.integers(*style.vessel_dots))), replace=False)
            ]
            for px, py in picks:
                vol[max(px - 1, 0) : px + 1, max(py - 1, 0) : py + 1, z] = bright
            rows.append((0, None, cat))
        else:
            raise ValueError(f"no demo sign for category {cat!r}.")
    return rows


def render_volume(
    template: np.ndarray,
    t_aff: np.ndarray,
    categories: Sequence[str],
    rng: np.random.Generator,
    style: SignStyle = DEMO_STYLE,
) -> tuple[np.ndarray, list[tuple[int, tuple | None, str]]]:
    """One demo subject: resampled anatomy, head rim, the signs of ``categories``, bias field and noise.

    Args:
        template: the MNI152 template from :func:`load_template`.
        t_aff: its affine.
        categories: the volume's categories (empty for a normal volume).
        rng: the volume's random generator (the demo uses ``default_rng([seed, index])``).
        style: how the signs are drawn.

    Returns:
        ``(data, rows)``: int16 ``[X, Y, Z]`` on :func:`demo_affine`'s grid, and fastMRI+ rows ``(slice, box or None,
        label)`` (a normal volume sometimes carries a study-level ``Normal for age`` row, as in fastMRI+).
    """
    vol = _subject_volume(template, t_aff, rng)
    vol, mask, d_out = _head(vol)
    rows = _draw_signs(vol, mask, d_out, list(categories), rng, style)
    if not categories and rng.uniform() < 0.5:
        rows.append((0, None, "Normal for age"))
    x, y = np.meshgrid(np.linspace(-1, 1, DEMO_SHAPE[0]), np.linspace(-1, 1, DEMO_SHAPE[1]), indexing="ij")
    bias = 1.0 + rng.uniform(-0.08, 0.08) * x[..., None] + rng.uniform(-0.08, 0.08) * y[..., None]
    vol = vol * rng.uniform(0.85, 1.15) * bias
    vol = np.abs(vol + rng.normal(0.0, 0.015, size=vol.shape))
    return np.clip(np.round(vol * 1000.0), 0, 32767).astype(np.int16), rows


def assign_categories(num_volumes: int, rng: np.random.Generator) -> list[list[str]]:
    """Categories per volume: about 30 % normal, each abnormal volume one category and sometimes (40 %) a second."""
    n_normal = max(1, int(round(0.3 * num_volumes)))
    cats = list(FASTMRI_BRAIN_CATEGORIES)
    order = [cats[i] for i in rng.permutation(len(cats))]
    out: list[list[str]] = []
    for i in range(num_volumes - n_normal):
        first = order[i % len(order)]
        chosen = [first]
        if rng.uniform() < 0.4:
            others = [c for c in cats if c != first]
            chosen.append(others[int(rng.integers(len(others)))])
        out.append(chosen)
    out += [[] for _ in range(n_normal)]
    perm = rng.permutation(num_volumes)
    return [out[i] for i in perm]


def _nifti_bytes(data: np.ndarray) -> bytes:
    img = nib.Nifti1Image(data, demo_affine())
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(demo_affine(), code=1)
    img.set_qform(demo_affine(), code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _paths(root: Path) -> dict[str, Path]:
    return {
        "root": root,
        "images_dir": root / "images",
        "annotations_csv": root / "brain.csv",
        "file_list_csv": root / "brain_file_list.csv",
        "manifest": root / "manifest.json",
    }


def _complete(root: Path, params: dict) -> bool:
    man = root / "manifest.json"
    if not man.is_file():
        return False
    try:
        doc = json.loads(man.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if doc.get("params") != params:
        return False
    files = doc.get("files", {})
    return bool(files) and all((root / rel).is_file() and _sha256(root / rel) == h for rel, h in files.items())


def generate_demo_dataset(out_dir: str | os.PathLike, num_volumes: int = 40, seed: int = 0) -> dict[str, Path]:
    """Generate (or reuse) the demo dataset described in the module docstring.

    Args:
        out_dir: destination folder (created; an existing folder must be empty or a previous demo dataset).
        num_volumes: number of volumes (>= 7 so every category and normals appear).
        seed: random seed; same seed and parameters -> byte-identical files.

    Returns:
        dict with ``root``, ``images_dir``, ``annotations_csv``, ``file_list_csv``, ``manifest`` paths. Image files
        are ``images_dir / f"{stem}{DEMO_SUFFIX}"``.

    Raises:
        ValueError: too few volumes, or ``out_dir`` holds unrelated files.
    """
    if isinstance(num_volumes, bool) or int(num_volumes) != num_volumes or num_volumes < 7:
        raise ValueError(f"num_volumes must be an integer >= 7 (6 categories + normals), got {num_volumes!r}.")
    root = Path(out_dir).resolve()
    params = {
        "generator_version": _GENERATOR_VERSION,
        "num_volumes": int(num_volumes),
        "seed": int(seed),
        "shape": list(DEMO_SHAPE),
        "spacing": list(DEMO_SPACING),
    }
    if _complete(root, params):
        return _paths(root)
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / "manifest.json").is_file())):
        raise ValueError(
            f"{root} exists and is not a demo dataset folder (no manifest.json); refusing to overwrite it."
        )

    template, t_aff = load_template()

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        (tmp / "images").mkdir()
        rng = np.random.default_rng(seed)
        assignment = assign_categories(int(num_volumes), rng)
        csv_lines = [",".join(FASTMRI_CSV_COLUMNS)]
        stems = []
        for i, cats in enumerate(assignment):
            vrng = np.random.default_rng([int(seed), i])
            stem = f"file_brain_AXT1_DEMO_{i:04d}"
            stems.append(stem)
            data, rows = render_volume(template, t_aff, cats, vrng)
            atomic_write_bytes(tmp / "images" / f"{stem}{DEMO_SUFFIX}", _nifti_bytes(data))
            for z, box, label in sorted(rows, key=lambda r: (r[2] not in (SMALL_VESSEL, "Normal for age"), r[0])):
                if box is None:
                    csv_lines.append(f"{stem},{z},Yes,,,,,{label}")
                else:
                    csv_lines.append(f"{stem},{z},No,{box[0]},{box[1]},{box[2]},{box[3]},{label}")
        atomic_write_bytes(tmp / "brain.csv", ("\n".join(csv_lines) + "\n").encode())
        atomic_write_bytes(tmp / "brain_file_list.csv", ("\n".join(stems) + "\n").encode())
        files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        atomic_write_json(tmp / "manifest.json", {"params": params, "files": files})
        trash = None
        if root.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, trash / "old")
        try:
            os.replace(tmp, root)
        except OSError:
            # another process (e.g. a second rank) finished the same dataset first: keep theirs if complete
            if not _complete(root, params):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _paths(root)
