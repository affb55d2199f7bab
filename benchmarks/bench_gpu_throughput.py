"""GPU inference throughput (slices/s) of the paper's detector (ViT-L-14, 240 px) under bf16 autocast.

Measures ``detector(images)`` in eval mode, ``no_grad`` and ``torch.autocast("cuda", torch.bfloat16)``, over several
batch sizes, and compares the best throughput with the FLOP bound: analytic forward FLOPs per slice (image tower +
adapters) against the GPU's peak dense bf16 rate (``--peak-tflops``, default 989 for an H100 SXM). Target: >= 3000
slices/s on an H100.

GPU only: on a machine without CUDA (or with ``--device cpu``) it refuses with exit status 2 and says why.

Run: ``python benchmarks/bench_gpu_throughput.py`` on a GPU machine (about 1 minute).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchutil as bu  # noqa: E402

NAME = "bench_gpu_throughput"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--image-size", type=int, default=240)
    parser.add_argument("--adapter-layers", nargs="+", type=int, default=[6, 8, 18, 24])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128, 256, 512])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    parser.add_argument("--device", default="cuda")
    bu.add_output_argument(parser)
    return parser.parse_args(argv)


def refuse_without_cuda(device: str) -> None:
    import torch

    if not device.startswith("cuda"):
        raise SystemExit(
            f"bench_gpu_throughput.py measures GPU throughput only; --device {device} is not a CUDA device."
        )
    if not torch.cuda.is_available():
        raise SystemExit(
            "bench_gpu_throughput.py needs a CUDA GPU, and torch "
            f"{torch.__version__} sees none on this machine (torch.cuda.is_available() is False): "
            "GPU throughput cannot be measured here. Run it on a machine with a GPU."
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        refuse_without_cuda(args.device)
    except SystemExit as refusal:
        print(refusal.code, file=sys.stderr)
        raise SystemExit(2) from refusal
    import torch
    from bench_inference import flop_counts

    from sdmad_monai.networks import SignDrivenDetector

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    detector = (
        SignDrivenDetector(
            model_name=args.model, pretrained=None, image_size=args.image_size, image_adapter_layers=args.adapter_layers
        )
        .to(device)
        .eval()
    )
    flops = flop_counts(detector)
    gflops = flops["backbone_gflops_per_image"] + flops["adapter_gflops_per_image"]
    bound = args.peak_tflops * 1e12 / (gflops * 1e9)
    info = bu.machine_info()
    rows = []
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, args.image_size, args.image_size, device=device)

        def call(images=images):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                return detector(images)

        timing = bu.time_call(call, args.warmup, args.repeats, torch.cuda.synchronize)
        rate = batch / timing["median_s"]
        rows.append(
            {"batch_size": batch, "timing": timing, "slices_per_s": rate, "fraction_of_flop_bound": rate / bound}
        )
        print(
            f"batch {batch:>4}: {rate:8.0f} slices/s ({rate / bound:.1%} of the {bound:.0f}/s FLOP bound)", flush=True
        )
    best = max(rows, key=lambda r: r["slices_per_s"])
    result = {
        "benchmark": NAME,
        "command": bu.command_line(argv),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "flops": flops,
        "flop_bound_slices_per_s": bound,
        "target": {"slices_per_s_min": 3000},
        "rows": rows,
        "summary": {
            "best_slices_per_s": best["slices_per_s"],
            "best_batch": best["batch_size"],
            "fraction_of_flop_bound": best["fraction_of_flop_bound"],
            "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
        },
    }
    path = bu.write_result(NAME, result, args.output)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
