"""End-to-end inference per volume (``infer_volumes``) with its outputs, against the same run without them.

Four runs over the same generated NIfTI volumes (demo generator; 120 by default, the demo's size), the tiny detector,
slices 0/5/10 (the fastMRI+ policy) or every slice, timed round-robin (one run of each per round, median of the
rounds):

- ``scores``: ``anomaly_maps=False``: reading, slicing, preprocessing, the model, ``findings.json`` / CSVs;
- ``maps``: also the anomaly maps and the 3D map NIfTI per volume, no overlays;
- ``default``: the bundle's default outputs: maps and one overlay gallery of the run (``overlays_top=10`` +
  ``overlays_random=10`` PNGs over all volumes, :func:`sdmad_monai.visualize.save_overlay`): a fixed cost, so its
  share falls as the run grows;
- ``per_volume``: maps and ``overlays_top=5`` + ``overlays_random=5`` PNGs per volume (``overlay_scope="volume"``,
  the default before the run gallery).

``--formats`` runs the same volumes as gzipped NIfTI (the demo's files, default), DICOM series folders (pydicom,
one folder per volume) and fastMRI ``.h5`` (``reconstruction_rss``, ``[slices, H, W]``).

It prints seconds per volume, ``default / maps`` (the cost of the overlays) and the overlays' share of the default
run, and the same for ``per_volume``. Run: ``python benchmarks/bench_inference_outputs.py`` (about 5 minutes on 2
CPU cores).
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

NAME = "bench_inference_outputs"
FORMATS = ("nii.gz", "dicom", "h5")
MODES = {
    "scores": dict(anomaly_maps=False, overlays_top=0, overlays_random=0),
    "maps": dict(anomaly_maps=True, overlays_top=0, overlays_random=0),
    "default": dict(anomaly_maps=True, overlays_top=10, overlays_random=10, overlay_scope="run"),
    "per_volume": dict(anomaly_maps=True, overlays_top=5, overlays_random=5, overlay_scope="volume"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=120, help="generated volumes (16 axial slices each)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (median)")
    parser.add_argument("--slices", choices=["fastmri", "all"], nargs="+", default=["fastmri", "all"])
    parser.add_argument("--formats", choices=FORMATS, nargs="+", default=["nii.gz"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    bu.add_output_argument(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.volumes, args.repeats, args.slices = 7, 1, ["fastmri"]
    return args


def as_format(volumes: list[Path], fmt: str, folder: Path) -> list[Path]:
    """The demo volumes written as ``fmt`` (same voxels): gzipped NIfTI as they are, one DICOM series folder each,
    or one fastMRI ``.h5`` each (the slices first, as fastMRI stores them)."""
    if fmt == "nii.gz":
        return volumes
    import h5py
    import nibabel as nib
    import numpy as np

    from sdmad_monai.deploy.demo import write_dicom_series

    converted = []
    for path in volumes:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        stem = path.name.removesuffix(".nii.gz")
        if fmt == "dicom":
            target = folder / "dicom" / stem
            write_dicom_series(data, target, affine=image.affine)
        else:
            target = folder / "h5" / f"{stem}.h5"
            target.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(target, "w") as handle:
                handle.create_dataset("reconstruction_rss", data=np.moveaxis(data, -1, 0).astype(np.float32))
        converted.append(target)
    return converted


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import warnings

    from sdmad_monai.data import generate_demo_dataset
    from sdmad_monai.inference import infer_volumes
    from sdmad_monai.networks import SignDrivenDetector

    args = parse_args(argv)
    bu.set_threads(args.threads)
    warnings.filterwarnings("ignore", "Sign selection kept no prompt")
    detector = SignDrivenDetector.from_preset("tiny").eval()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdmad_bench_") as temporary:
        demo = generate_demo_dataset(Path(temporary) / "demo", num_volumes=args.volumes, seed=0)
        demo_volumes = sorted(Path(demo["images_dir"]).glob("*.nii.gz"))
        converted = {fmt: as_format(demo_volumes, fmt, Path(temporary) / "formats") for fmt in args.formats}
        for fmt, policy in [(f, p) for f in args.formats for p in args.slices]:
            volumes = converted[fmt]
            slices = dict(indices=[0, 5, 10]) if policy == "fastmri" else dict(stride=1)
            calls = {
                mode: functools.partial(
                    infer_volumes,
                    detector,
                    volumes,
                    Path(temporary) / f"out_{fmt}_{policy}_{mode}",
                    **MODES[mode],
                    **slices,
                )
                for mode in MODES
            }
            times = bu.time_interleaved(calls, warmup=1, repeats=args.repeats)
            per_volume = {mode: times[mode]["median_s"] / len(volumes) for mode in MODES}
            row = {
                "format": fmt,
                "slices": policy,
                "volumes": len(volumes),
                "seconds_per_volume": per_volume,
                "default_over_maps": per_volume["default"] / per_volume["maps"],
                "default_over_scores": per_volume["default"] / per_volume["scores"],
                "overlay_share_of_default": 1.0 - per_volume["maps"] / per_volume["default"],
                "volumes_per_second_default": 1.0 / per_volume["default"],
                "per_volume_over_maps": per_volume["per_volume"] / per_volume["maps"],
                "overlay_share_of_per_volume": 1.0 - per_volume["maps"] / per_volume["per_volume"],
                "timings": times,
            }
            rows.append(row)
            print(
                f"{fmt:7s} {policy:8s} scores {bu.fmt_ms(per_volume['scores'])}  maps {bu.fmt_ms(per_volume['maps'])}  "
                f"default {bu.fmt_ms(per_volume['default'])} per volume | default/maps "
                f"{row['default_over_maps']:.2f}  overlays {row['overlay_share_of_default']:.0%} of the run  "
                f"({row['volumes_per_second_default']:.1f} volumes/s) | per-volume overlays "
                f"{bu.fmt_ms(per_volume['per_volume'])}: {row['per_volume_over_maps']:.2f} x maps",
                flush=True,
            )
    result = {
        "benchmark": NAME,
        "command": bu.command_line(argv),
        "machine": bu.machine_info(),
        "settings": {
            "volumes": args.volumes,
            "repeats": args.repeats,
            "slices": args.slices,
            "formats": args.formats,
            "modes": MODES,
        },
        "summary": [{k: v for k, v in row.items() if k != "timings"} for row in rows],
        "rows": rows,
    }
    return bu.finish(NAME, result, args.smoke, args.output)


if __name__ == "__main__":
    main()
