"""Volume read + slice extraction + CLIP preprocessing per volume, vs the model's time per volume.

For each format (uncompressed NIfTI ``.nii``, gzipped NIfTI ``.nii.gz``, a DICOM series folder written with pydicom,
fastMRI ``.h5`` with ``reconstruction_rss`` ``[slices, H, W]``) and each slice policy (``[0, 5, 10]`` and all
slices), timed per volume, median of the repeats:

- ``lazy_read``: ``LoadSlices("axial", ...)(path)`` (reads only the needed slices);
- ``full_read``: ``ExtractSlices("axial", ...)(load_volume(path))`` (decodes the whole volume first);
- ``pipeline``: ``lazy_read`` + ``clip_slice_transforms`` on every slice + stacking (what ``infer_volume`` does
  before the model);
- ``model``: the detector (ViT-B-16 at 224 on CPU by default) on the stacked slices, eval mode, ``no_grad``.

Reported: ``pipeline / model`` (target <= 0.10) and ``full_read / lazy_read`` (lazy should win on ``.nii`` and
``.h5``). Volumes: 256x256x16 int16 for NIfTI/DICOM, 16x320x320 float32 for ``.h5`` (a smooth phantom plus noise,
so that gzip compresses it like an MR image, not like white noise).

Run: ``python benchmarks/bench_volume_pipeline.py`` (about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchutil as bu  # noqa: E402

NAME = "bench_volume_pipeline"
FORMATS = ("nii", "nii.gz", "dicom", "h5")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", choices=["ViT-B-16", "sdmad-tiny"])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--shape", nargs=3, type=int, default=[256, 256, 16], help="NIfTI/DICOM X Y Z")
    parser.add_argument("--h5-shape", nargs=3, type=int, default=[16, 320, 320], help="fastMRI slices H W")
    parser.add_argument("--indices", nargs="+", type=int, default=[0, 5, 10])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="where the volumes are written (default: a temp folder)")
    bu.add_output_argument(parser)
    parser.add_argument("--smoke", action="store_true", help="tiny model, small volumes, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.shape, args.h5_shape = "sdmad-tiny", [32, 32, 12], [12, 32, 32]
        args.warmup, args.repeats, args.model_repeats = 0, 1, 1
    return args


def phantom(shape: Sequence[int], seed: int = 0):
    """A smooth 3D phantom (ellipsoids) plus mild noise, float32 in [0, ~1000]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    volume = np.zeros(shape, dtype=np.float32)
    for radius, value in ((0.9, 400.0), (0.7, 300.0), (0.25, 250.0)):
        inside = sum((g / radius) ** 2 for g in grids) <= 1.0
        volume[inside] += value
    volume += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    return np.clip(volume, 0, None)


def write_volumes(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    import h5py
    import nibabel as nib
    import numpy as np

    from sdmad_monai.deploy.demo import write_dicom_series

    folder.mkdir(parents=True, exist_ok=True)
    data = phantom(args.shape).astype(np.int16)
    affine = np.diag([0.9, 0.9, 5.0, 1.0])
    paths: dict[str, Path] = {}
    image = nib.Nifti1Image(data, affine)
    if "nii" in args.formats:
        paths["nii"] = folder / "volume.nii"
        nib.save(image, paths["nii"])
    if "nii.gz" in args.formats:
        paths["nii.gz"] = folder / "volume.nii.gz"
        nib.save(image, paths["nii.gz"])
    if "dicom" in args.formats:
        paths["dicom"] = folder / "dicom_series"
        write_dicom_series(data, paths["dicom"], affine=affine)
    if "h5" in args.formats:
        paths["h5"] = folder / "volume.h5"
        with h5py.File(paths["h5"], "w") as handle:
            handle.create_dataset("reconstruction_rss", data=phantom(args.h5_shape, seed=1) / 1000.0)
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bu.set_threads(args.threads)
    import torch

    from sdmad_monai.networks import SignDrivenDetector
    from sdmad_monai.transforms import ExtractSlices, LoadSlices, clip_slice_transforms, load_volume

    info = bu.machine_info()
    print(
        f"machine: {info['cpu_count']} CPUs, torch threads {info['torch_threads']}, GPU {info['gpu']}; "
        f"load {info['load_average_1min']}",
        flush=True,
    )
    spec = {
        "ViT-B-16": dict(model_name="ViT-B-16", pretrained=None, image_size=224, image_adapter_layers=[3, 6, 9, 12]),
        "sdmad-tiny": dict(model_name="sdmad-tiny", pretrained=None, image_size=64, image_adapter_layers=[2, 3, 5, 6]),
    }[args.model]
    detector = SignDrivenDetector(**spec).eval()
    preprocess = clip_slice_transforms("image", detector.image_size, detector.image_mean, detector.image_std)

    def prepare(slices):
        return torch.stack([torch.as_tensor(preprocess({"image": s})["image"]) for s in slices]).float()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        paths = write_volumes(Path(tmp), args)
        sizes = {fmt: sum(f.stat().st_size for f in ([p] if p.is_file() else p.iterdir())) for fmt, p in paths.items()}
        rows = []
        model_ms: dict[int, float] = {}
        for policy_name, policy in (("indices", dict(indices=args.indices)), ("all", dict(stride=1))):
            for fmt, path in paths.items():
                lazy = LoadSlices("axial", **policy)
                full = ExtractSlices("axial", **policy)
                timings = bu.time_interleaved(
                    {
                        "lazy_read": lambda lazy=lazy, path=path: lazy(path),
                        "full_read": lambda full=full, path=path: full(load_volume(path)),
                        "pipeline": lambda lazy=lazy, path=path: prepare(lazy(path)),
                        "full_pipeline": lambda full=full, path=path: prepare(full(load_volume(path))),
                    },
                    args.warmup,
                    args.repeats,
                )
                images = prepare(lazy(path))
                count = images.shape[0]
                if count not in model_ms:
                    with torch.no_grad():
                        timing = bu.time_call(functools.partial(detector, images), 1, args.model_repeats)
                        model_ms[count] = timing["median_s"]
                lazy_s, full_s, pipe_s = (timings[n]["median_s"] for n in ("lazy_read", "full_read", "pipeline"))
                row = {
                    "format": fmt,
                    "policy": policy_name,
                    "num_slices": count,
                    "file_bytes": sizes[fmt],
                    "timings": timings,
                    "lazy_read_ms": lazy_s * 1e3,
                    "full_read_ms": full_s * 1e3,
                    "pipeline_ms": pipe_s * 1e3,
                    "full_pipeline_ms": timings["full_pipeline"]["median_s"] * 1e3,
                    "model_ms": model_ms[count] * 1e3,
                    "pipeline_over_model": pipe_s / model_ms[count],
                    "full_read_over_lazy_read": full_s / lazy_s,
                }
                rows.append(row)
                print(
                    f"{fmt:>7} {policy_name:>7} ({count:>2} slices): lazy read {bu.fmt_ms(lazy_s)}  full read "
                    f"{bu.fmt_ms(full_s)}  (full/lazy {row['full_read_over_lazy_read']:.2f})  pipeline "
                    f"{bu.fmt_ms(pipe_s)}  model {bu.fmt_ms(model_ms[count])}  pipeline/model "
                    f"{row['pipeline_over_model']:.3f}",
                    flush=True,
                )
    result = {
        "benchmark": NAME,
        "command": bu.command_line(argv),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "workdir")},
        "model": spec,
        "target": {"pipeline_over_model_max": 0.10, "lazy_faster_on": ["nii", "h5"]},
        "rows": rows,
        "summary": {
            f"{r['format']}/{r['policy']}": {
                "pipeline_over_model": round(r["pipeline_over_model"], 4),
                "full_read_over_lazy_read": round(r["full_read_over_lazy_read"], 3),
            }
            for r in rows
        },
    }
    return bu.finish(NAME, result, args.smoke, args.output)


if __name__ == "__main__":
    main()
