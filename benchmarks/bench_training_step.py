"""Training step time and peak memory: cached text path (the default) vs full text re-encoding per step.

One step = ``detector(images, output="all")`` + ``SDMADLoss`` + ``backward`` + ``Adam.step``, batch 8, in training
mode (the text adapter on, so the adapted last text block runs with gradient every step).

Modes:

- ``cached`` (library default): ``detector._text_path`` runs the frozen text blocks once and only the adapted last
  block + head on every step;
- ``full``: ``detector._text_path.encode`` is replaced, in this script only, by ``detector.backbone.encode_text``
  (all text blocks re-run every step, the adapter hook still applies on the last block).

Each mode runs in its own fresh interpreter (``--worker``), so its peak resident memory (``ru_maxrss``) is its own;
with ``--device cuda`` the peak GPU memory (``torch.cuda.max_memory_allocated``) is reported as well, e.g. the
paper's setting: ``--model ViT-L-14 --image-size 240 --adapter-layers 6 8 18 24 --device cuda`` (compare with the
paper's 4000 MiB).

Run: ``python benchmarks/bench_training_step.py`` (ViT-B-16 at 224 on CPU, about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchutil as bu  # noqa: E402

NAME = "bench_training_step"
MODES = ("cached", "full")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--adapter-layers", nargs="+", type=int, default=[3, 6, 9, 12])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--in-process", action="store_true", help="run the modes here, not in subprocesses "
                        "(peak memory is then cumulative over the modes)")
    parser.add_argument("--output", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny model, batch 2, one step, in-process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="cached", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.image_size, args.adapter_layers = "sdmad-tiny", 64, [2, 3, 5, 6]
        args.batch_size, args.warmup, args.repeats, args.in_process = 2, 1, 1, True
    return args


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device} asked for, but torch {torch.__version__} sees no CUDA GPU on this machine; "
            "run with --device cpu, or on a machine with a GPU."
        )


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Build the detector, run warm-up + timed steps in ``mode``; returns times, text-call counts and peak memory."""
    import torch

    from sdmad_monai.losses import SDMADLoss
    from sdmad_monai.networks import SignDrivenDetector

    device = torch.device(args.device)
    rss_start = bu.peak_rss_mib()
    detector = SignDrivenDetector(
        model_name=args.model, pretrained=None, image_size=args.image_size, image_adapter_layers=args.adapter_layers
    ).to(device)
    detector.train()
    calls = {"last_block_only": 0, "full_encode_text": 0}
    cached_encode = detector._text_path.encode

    def counted_cached(tokens):
        calls["last_block_only"] += 1
        return cached_encode(tokens)

    def full_encode(tokens):
        calls["full_encode_text"] += 1
        return detector.backbone.encode_text(tokens)

    detector._text_path.encode = counted_cached if mode == "cached" else full_encode
    loss_fn = SDMADLoss()
    optimizer = torch.optim.Adam(detector.trainable_parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device)
    labels = (torch.rand(args.batch_size, detector.num_categories, generator=generator) < 0.3).float().to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(detector(images, output="all"), labels)
        loss.backward()
        optimizer.step()
        return loss

    rss_built = bu.peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = dict(calls)
    timing = bu.time_call(step, args.warmup, args.repeats, sync)
    steps = args.warmup + args.repeats
    result = {
        "mode": mode,
        "timing": timing,
        "step_ms": timing["median_s"] * 1e3,
        "text_calls_per_step": {k: (calls[k] - before[k]) / steps for k in calls},
        "peak_rss_mib": bu.peak_rss_mib(),
        "peak_rss_after_build_mib": rss_built,
        "peak_rss_at_start_mib": rss_start,
        "trainable_parameters": sum(p.numel() for p in detector.trainable_parameters()),
        "num_prompts": int(detector.tokens.shape[0]),
    }
    if device.type == "cuda":
        result["cuda_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_max_memory_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bu.set_threads(args.threads)
    check_device(args.device)
    if args.worker:
        print(json.dumps(run_mode(args, args.mode)), flush=True)
        return {}
    info = bu.machine_info()
    print(f"machine: {info['cpu_count']} CPUs, torch threads {info['torch_threads']}, GPU {info['gpu']}; "
          f"load {info['load_average_1min']}", flush=True)
    forwarded = [
        "--model", args.model, "--image-size", str(args.image_size), "--adapter-layers",
        *map(str, args.adapter_layers), "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
        "--repeats", str(args.repeats), "--device", args.device,
    ] + (["--threads", str(args.threads)] if args.threads else [])
    modes = {}
    for mode in args.modes:
        start = time.perf_counter()
        if args.in_process:
            modes[mode] = run_mode(args, mode)
        else:
            modes[mode] = bu.run_worker(Path(__file__), forwarded + ["--mode", mode])
        r = modes[mode]
        gpu = f"  GPU peak {r['cuda_max_memory_allocated_mib']:.0f} MiB" if "cuda_max_memory_allocated_mib" in r else ""
        print(f"{mode:>6}: step {bu.fmt_ms(r['step_ms'] / 1e3)}  peak RSS {r['peak_rss_mib']:.0f} MiB (after build "
              f"{r['peak_rss_after_build_mib']:.0f}){gpu}  text calls/step {r['text_calls_per_step']}  "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
    summary: dict[str, Any] = {}
    if "cached" in modes and "full" in modes:
        c, f = modes["cached"], modes["full"]
        summary = {
            "step_ms_cached": round(c["step_ms"], 1),
            "step_ms_full": round(f["step_ms"], 1),
            "speedup_full_over_cached": round(f["step_ms"] / c["step_ms"], 3),
            "peak_rss_mib_cached": round(c["peak_rss_mib"], 1),
            "peak_rss_mib_full": round(f["peak_rss_mib"], 1),
            "peak_rss_ratio_full_over_cached": round(f["peak_rss_mib"] / c["peak_rss_mib"], 3),
        }
        if "cuda_max_memory_allocated_mib" in c:
            summary["cuda_peak_mib_cached"] = round(c["cuda_max_memory_allocated_mib"], 1)
            summary["cuda_peak_mib_full"] = round(f["cuda_max_memory_allocated_mib"], 1)
        print("summary:", summary)
    result = {
        "benchmark": NAME,
        "command": bu.command_line(argv),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "worker", "mode")},
        "memory_method": "ru_maxrss of the process running the mode"
        + (" (in-process: cumulative)" if args.in_process else " (one fresh subprocess per mode)"),
        "modes": modes,
        "summary": summary,
    }
    path = bu.write_result(NAME + ("_smoke" if args.smoke else ""), result, args.output)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
