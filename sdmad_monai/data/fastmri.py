"""fastMRI+ brain annotations -> MONAI datalist of labelled slices.

Inputs are the two fastMRI+ files: ``brain.csv`` (header ``file,slice,study_level,x,y,width,height,label``; one row
per box; study-level rows have ``study_level = Yes``, ``slice = 0`` and an empty box) and ``brain_file_list.csv``
(the reviewed volumes, one file stem per line, no header; a volume without rows had no finding).

Rules (documented choices):

* Each item is one (volume, slice) pair for ``slices`` (default ``(0, 5, 10)``), with a multi-hot ``label`` over
  ``categories`` (default :data:`FASTMRI_BRAIN_CATEGORIES`, the paper's six exact fastMRI+ strings).
* Study-level rows (``study_level``): ``"as_annotated"`` (paper) applies them to the slice they are annotated on
  (slice 0); ``"all_slices"`` applies them to every selected slice of the volume; ``"ignore"`` drops study-level
  rows altogether (so a study-level category, like the Global small-vessel label, is never positive).
* Labels outside ``categories``: ``"Normal for age"`` and ``"Normal variant"`` (:data:`FASTMRI_NORMAL_LABELS`) are
  not findings and never change an item. Any other label is *unknown*: it never makes an item positive, a single
  warning lists all unknown labels with their row counts, and with ``unknown_labels="exclude"`` (default) every slice
  carrying an unknown label is dropped, so that an all-zero label really means "no finding"; with ``"ignore"`` the
  unknown labels are disregarded (such a slice can be all-zero while showing e.g. a mass).
* Images are ``data_dir / f"{file}{suffix}"`` (``.h5`` for fastMRI, ``.nii.gz`` for the demo). ``missing="error"``
  raises for a file that is not on disk, ``"skip"`` drops its items with a warning, ``"ignore"`` keeps the items
  without checking (to build label tables without the images).
* Boxes: every item carries ``"boxes"``, the slice-level boxes of its categories as a JSON *string*
  ``'[[x, y, width, height, "label"], ...]'`` (``"[]"`` for none; study-level rows give none; values copied
  verbatim from the CSV), and ``"box_frame"``, how to read them. A string, not a list, so that a plain MONAI/PyTorch
  ``DataLoader`` still collates the items (it cannot collate lists of different lengths); read it back with
  :func:`decode_boxes`. ``box_frame`` is ``"display"`` when the boxes are pixel coordinates (x = column, y = row of
  the top-left corner) of the slice in the display orientation of :class:`~sdmad_monai.transforms.ExtractSlices`
  (the demo dataset), or ``"flipped_rows"`` for fastMRI+ ``.h5`` data: fastMRI+ drew its boxes on vertically flipped
  images, so on a stored ``reconstruction_rss`` slice of height ``H`` (which is what ``ExtractSlices`` returns for
  ``.h5``) the box rows are ``H - y - height`` to ``H - y`` (see :func:`sdmad_monai.visualize.box_to_input_frame`).
  The builder's ``box_frame="auto"`` picks ``"flipped_rows"`` for ``.h5``/``.hdf5`` and ``"display"`` otherwise.
  All boxes of the kept items are also listed in :attr:`FastMRIDatalist.boxes` (and the JSON's top-level
  ``"boxes"``), one ``{"file", "slice", "x", "y", "width", "height", "label"}`` per box.
* Slice indices are not checked against the volume (that needs the image); the loader raises for an index outside
  the volume, naming the file.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sdmad_monai.utils import atomic_write_json

__all__ = [
    "FASTMRI_BRAIN_CATEGORIES",
    "FASTMRI_NORMAL_LABELS",
    "FASTMRI_CSV_COLUMNS",
    "FastMRIAnnotation",
    "FastMRIDatalist",
    "BOX_FRAMES",
    "decode_boxes",
    "read_fastmri_annotations",
    "read_fastmri_file_list",
    "build_fastmri_datalist",
]

logger = logging.getLogger(__name__)

FASTMRI_BRAIN_CATEGORIES: tuple[str, ...] = (
    "Craniotomy",
    "Posttreatment change",
    "Nonspecific lesion",
    "Dural thickening",
    "Enlarged ventricles",
    "Global label: Small vessel chronic white matter ischemic change",
)
FASTMRI_NORMAL_LABELS: tuple[str, ...] = ("Normal for age", "Normal variant")
FASTMRI_CSV_COLUMNS: tuple[str, ...] = ("file", "slice", "study_level", "x", "y", "width", "height", "label")
#: Values of an item's ``"box_frame"`` (module docstring).
BOX_FRAMES: tuple[str, ...] = ("display", "flipped_rows")
_H5_SUFFIXES = (".h5", ".hdf5")


def decode_boxes(value: object) -> list[tuple[int, int, int, int, str]]:
    """The boxes of one datalist item: ``[(x, y, width, height, label), ...]``.

    Args:
        value: an item's ``"boxes"``: the JSON string the builder writes, an already decoded list of
            ``[x, y, width, height, label]``, or ``None``/``""`` (no box).

    Raises:
        ValueError: a value that is not such a list.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    boxes = json.loads(value) if isinstance(value, str) else value
    if not isinstance(boxes, (list, tuple)):
        raise ValueError(f"boxes must be a list of [x, y, width, height, label], got {value!r}.")
    result = []
    for box in boxes:
        if not isinstance(box, (list, tuple)) or len(box) != 5:
            raise ValueError(f"each box must be [x, y, width, height, label], got {box!r} in {value!r}.")
        x, y, w, h, label = box
        result.append((int(x), int(y), int(w), int(h), str(label)))
    return result


@dataclass(frozen=True)
class FastMRIAnnotation:
    """One row of ``brain.csv``.

    Attributes:
        file: volume file stem.
        slice: slice index.
        study_level: True for study-level rows.
        box: (x, y, width, height) in pixels, None for study-level rows.
        label: the label string.
        line: line number in the CSV (1 = header).
    """

    file: str
    slice: int
    study_level: bool
    box: tuple[int, int, int, int] | None
    label: str
    line: int


def read_fastmri_annotations(csv_path: str | os.PathLike) -> list[FastMRIAnnotation]:
    """Read and validate a fastMRI+ ``brain.csv``.

    Args:
        csv_path: path of the CSV.

    Returns:
        the rows.

    Raises:
        FileNotFoundError: missing file.
        ValueError: missing columns or a malformed row (naming file, line and value).
    """
    path = str(csv_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fastMRI+ annotation CSV not found: {path}")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in FASTMRI_CSV_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; expected the fastMRI+ header {','.join(FASTMRI_CSV_COLUMNS)}, "
                f"got {header}."
            )
        for line, r in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            try:
                sl = int(r["slice"])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: slice {r['slice']!r} is not an integer.") from None
            if sl < 0:
                raise ValueError(f"{where}: slice {sl} is negative.")
            level = (r["study_level"] or "").strip()
            if level not in ("Yes", "No"):
                raise ValueError(f"{where}: study_level {r['study_level']!r} is not 'Yes' or 'No'.")
            label = (r["label"] or "").strip()
            if not label:
                raise ValueError(f"{where}: empty label.")
            stem = (r["file"] or "").strip()
            if not stem:
                raise ValueError(f"{where}: empty file name.")
            box: tuple[int, int, int, int] | None = None
            raw = [(r[k] or "").strip() for k in ("x", "y", "width", "height")]
            if level == "No":
                try:
                    x, y, width, height = (int(float(v)) for v in raw)
                    box = (x, y, width, height)
                except ValueError:
                    raise ValueError(
                        f"{where}: slice-level row needs a numeric box x,y,width,height, got {raw}."
                    ) from None
            elif any(raw):
                raise ValueError(f"{where}: study-level row must have an empty box, got {raw}.")
            rows.append(FastMRIAnnotation(stem, sl, level == "Yes", box, label, line))
    return rows


def read_fastmri_file_list(path: str | os.PathLike) -> list[str]:
    """Read ``brain_file_list.csv``: one file stem per line, no header (blank lines ignored, order kept).

    Args:
        path: path of the list.

    Returns:
        unique stems in file order.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fastMRI+ file list not found: {path}")
    stems: list[str] = []
    seen = set()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            s = line.strip()
            if not s:
                continue
            if "," in s or (line_no == 1 and s.lower() == "file"):
                raise ValueError(
                    f"{path}, line {line_no}: {s!r} is not a file stem; "
                    "the file list has one stem per line and no header."
                )
            if s not in seen:
                seen.add(s)
                stems.append(s)
    if not stems:
        raise ValueError(f"{path} lists no file.")
    return stems


@dataclass
class FastMRIDatalist:
    """Result of :func:`build_fastmri_datalist`.

    Attributes:
        items: datalist items ``{"image", "label", "slice", "file", "boxes", "box_frame"}`` (absolute image paths;
            ``boxes`` a JSON string, see :func:`decode_boxes`).
        categories: the category order of ``label``.
        slices: the selected slices.
        counts: ``counts[row][slice]``; rows are the categories (positive items), ``"normal"`` (all-zero label),
            ``"excluded"`` (dropped for unknown labels) and ``"items"`` (kept items); column ``"total"`` sums slices.
        unknown_label_counts: unknown label -> number of CSV rows.
        table: ``counts`` as a printable table.
        settings: the builder options (written to the JSON).
        boxes: slice-level boxes of the kept items, ``{"file", "slice", "x", "y", "width", "height", "label"}``.
    """

    items: list[dict]
    categories: tuple[str, ...]
    slices: tuple[int, ...]
    counts: dict[str, dict]
    unknown_label_counts: dict[str, int]
    table: str
    settings: dict = field(default_factory=dict)
    boxes: list[dict] = field(default_factory=list)

    def boxes_for(self, file: str, slice_index: int) -> list[dict]:
        """Boxes of one item (``file`` stem and slice index)."""
        return [b for b in self.boxes if b["file"] == file and b["slice"] == slice_index]

    def to_json(self, path: str | os.PathLike, section: str = "training") -> Path:
        """Write a ``monai.data.load_decathlon_datalist`` compatible JSON atomically.

        Image paths are written relative to the JSON's folder (the decathlon convention).

        Args:
            path: output file.
            section: datalist key (``load_decathlon_datalist(path, is_segmentation=False, data_list_key=section)``).

        Returns:
            the path.
        """
        path = Path(path)
        base = path.resolve().parent
        items = [dict(it, image=os.path.relpath(it["image"], base)) for it in self.items]
        doc = {
            "description": "fastMRI+ brain slices with multi-hot labels (sdmad_monai.data.build_fastmri_datalist)",
            "categories": list(self.categories),
            "slices": list(self.slices),
            "settings": self.settings,
            "counts": {r: {str(k): v for k, v in c.items()} for r, c in self.counts.items()},
            "boxes": self.boxes,
            section: items,
        }
        return atomic_write_json(path, doc)


def _format_table(counts: dict[str, dict], slices: Sequence[int]) -> str:
    cols = [f"slice {s}" for s in slices] + ["total"]
    keys = list(slices) + ["total"]
    w0 = max(len(r) for r in counts)
    widths = [max(len(c), 6) for c in cols]
    lines = [" " * w0 + " | " + " | ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines.append("-" * len(lines[0]))
    for r, c in counts.items():
        lines.append(r.ljust(w0) + " | " + " | ".join(str(c[k]).rjust(w) for k, w in zip(keys, widths)))
    return "\n".join(lines)


def build_fastmri_datalist(
    annotations_csv: str | os.PathLike,
    file_list_csv: str | os.PathLike,
    data_dir: str | os.PathLike,
    categories: Sequence[str] = FASTMRI_BRAIN_CATEGORIES,
    slices: Sequence[int] = (0, 5, 10),
    study_level: str = "as_annotated",
    unknown_labels: str = "exclude",
    suffix: str = ".h5",
    missing: str = "error",
    output_json: str | os.PathLike | None = None,
    section: str = "training",
    verbose: bool = False,
    box_frame: str = "auto",
) -> FastMRIDatalist:
    """Build the slice datalist from fastMRI+ annotations (rules in the module docstring).

    Args:
        annotations_csv: ``brain.csv``.
        file_list_csv: ``brain_file_list.csv``.
        data_dir: folder of the images.
        categories: label categories (exact fastMRI+ strings), order of the multi-hot vector.
        slices: slice indices per volume.
        study_level: ``"as_annotated"``, ``"all_slices"`` or ``"ignore"``.
        unknown_labels: ``"exclude"`` or ``"ignore"``.
        suffix: image file suffix.
        missing: ``"error"``, ``"skip"`` or ``"ignore"`` for images not on disk.
        output_json: when given, the datalist JSON is written there atomically.
        section: datalist key in the JSON.
        verbose: also print the counts table (it is always logged at INFO level).
        box_frame: ``"display"``, ``"flipped_rows"`` or ``"auto"`` (``"flipped_rows"`` for ``.h5``/``.hdf5``, the
            fastMRI+ convention; ``"display"`` otherwise): how the CSV boxes relate to the slices (module docstring).

    Returns:
        :class:`FastMRIDatalist`.

    Raises:
        ValueError: bad option, malformed CSV, CSV rows for files not in the list, missing images.
    """
    if study_level not in ("as_annotated", "all_slices", "ignore"):
        raise ValueError(f"study_level must be 'as_annotated', 'all_slices' or 'ignore', got {study_level!r}.")
    if unknown_labels not in ("exclude", "ignore"):
        raise ValueError(f"unknown_labels must be 'exclude' or 'ignore', got {unknown_labels!r}.")
    if missing not in ("error", "skip", "ignore"):
        raise ValueError(f"missing must be 'error', 'skip' or 'ignore', got {missing!r}.")
    if box_frame == "auto":
        box_frame = "flipped_rows" if suffix.lower().endswith(_H5_SUFFIXES) else "display"
    if box_frame not in BOX_FRAMES:
        raise ValueError(f"box_frame must be 'auto' or one of {list(BOX_FRAMES)}, got {box_frame!r}.")
    categories = tuple(categories)
    if not categories or len(set(categories)) != len(categories):
        raise ValueError(f"categories must be non-empty and unique, got {categories}.")
    slices = tuple(int(s) for s in slices)
    if not slices or any(s < 0 for s in slices) or len(set(slices)) != len(slices):
        raise ValueError(f"slices must be unique non-negative integers, got {slices}.")

    rows = read_fastmri_annotations(annotations_csv)
    stems = read_fastmri_file_list(file_list_csv)
    listed = set(stems)
    unlisted = sorted({r.file for r in rows} - listed)
    if unlisted:
        raise ValueError(
            f"{annotations_csv} annotates {len(unlisted)} file(s) absent from {file_list_csv}: {unlisted[:5]}."
        )
    cat_index = {c: i for i, c in enumerate(categories)}
    known = set(categories) | set(FASTMRI_NORMAL_LABELS)
    unknown_counts = Counter(r.label for r in rows if r.label not in known)
    if unknown_counts:
        listing = ", ".join(f"{k!r}: {v}" for k, v in sorted(unknown_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        action = "slices carrying them are excluded" if unknown_labels == "exclude" else "they are ignored"
        warnings.warn(
            f"{annotations_csv}: {len(unknown_counts)} label(s) outside the category list ({action}; "
            f"row counts): {listing}",
            UserWarning,
            stacklevel=2,
        )

    per_slice: dict[tuple[str, int], list[FastMRIAnnotation]] = {}
    study_rows: dict[str, list[FastMRIAnnotation]] = {}
    for r in rows:
        if r.study_level:
            if study_level == "ignore":
                continue
            if study_level == "all_slices":
                study_rows.setdefault(r.file, []).append(r)
                continue
        per_slice.setdefault((r.file, r.slice), []).append(r)

    data_dir = Path(data_dir).resolve()
    missing_files = []
    items: list[dict] = []
    boxes: list[dict] = []
    rows_names = list(categories) + ["normal", "excluded", "items"]
    counts: dict[str, dict[int | str, int]] = {name: {s: 0 for s in slices} for name in rows_names}
    for stem in stems:
        image = data_dir / f"{stem}{suffix}"
        if missing != "ignore" and not image.exists():
            missing_files.append(str(image))
            continue
        for s in slices:
            anns = per_slice.get((stem, s), []) + study_rows.get(stem, [])
            if unknown_labels == "exclude" and any(a.label not in known for a in anns):
                counts["excluded"][s] += 1
                continue
            label = [0.0] * len(categories)
            item_boxes = []
            for a in anns:
                if a.label in cat_index:
                    label[cat_index[a.label]] = 1.0
                    if a.box is not None:
                        x, y, w, h = a.box
                        boxes.append(
                            {"file": stem, "slice": s, "x": x, "y": y, "width": w, "height": h, "label": a.label}
                        )
                        item_boxes.append([x, y, w, h, a.label])
            findings = [c for c, v in zip(categories, label) if v]
            for c in findings:
                counts[c][s] += 1
            if not findings:
                counts["normal"][s] += 1
            counts["items"][s] += 1
            items.append(
                {
                    "image": str(image),
                    "label": label,
                    "slice": s,
                    "file": stem,
                    "boxes": json.dumps(item_boxes),
                    "box_frame": box_frame,
                }
            )
    if missing_files:
        if missing == "error":
            raise FileNotFoundError(
                f"{len(missing_files)} image(s) listed in {file_list_csv} are not on disk, e.g. {missing_files[:3]} "
                "(use missing='skip' to drop them)."
            )
        warnings.warn(f"skipped {len(missing_files)} volume(s) not on disk, e.g. {missing_files[:3]}.", stacklevel=2)
    for row_counts in counts.values():
        row_counts["total"] = sum(row_counts[s] for s in slices)
    table = _format_table(counts, slices)
    logger.info("fastMRI+ datalist (%d items):\n%s", len(items), table)
    if verbose:
        print(table)
    settings = {
        "study_level": study_level,
        "unknown_labels": unknown_labels,
        "suffix": suffix,
        "missing": missing,
        "box_frame": box_frame,
        "annotations_csv": str(annotations_csv),
        "file_list_csv": str(file_list_csv),
    }
    result = FastMRIDatalist(items, categories, slices, counts, dict(unknown_counts), table, settings, boxes)
    if output_json is not None:
        result.to_json(output_json, section=section)
    return result
