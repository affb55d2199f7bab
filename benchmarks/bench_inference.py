"""Detector inference vs bare open_clip ``encode_image`` + L2 normalisation, on the same backbone weights.

Per model and batch size, three timings, taken round-robin (one call of each per round), median of the repeats:

- ``detector``: ``SignDrivenDetector(...)(images)`` in eval mode under ``no_grad`` (Eq. 7 scores);
- ``disabled``: ``F.normalize(detector.backbone.encode_image(images))`` inside ``detector.adapters_disabled()``:
  the same module without the adapters' compute;
- ``bare``: ``F.normalize(model.encode_image(images))`` of a separate ``load_clip(model_name)`` (same seed, so the
  same random weights; no hooks attached at all).

The adapters add real compute (one two-layer MLP per adapted block on every token): the script also gives their
share of the FLOPs (analytic count), so ``ratio_vs_bare / (1 + adapter_flop_fraction)`` is the overhead beyond the
adapters' arithmetic. It also counts text-path calls during the timed loop (must be 0: text features and sign
selection are computed once, when the detector is put in eval mode).

On a machine shared with other jobs, ``--threads 1 --clock thread`` times the CPU time of the (only) compute thread
instead of wall time, which waiting for a core does not inflate.

Run: ``python benchmarks/bench_inference.py`` (about 2 minutes on 2 CPU cores: ViT-B-16 at batch 1 and 8, the tiny
model at 1, 8, 32); ``--vit-batch-sizes 1 8 32`` adds ViT-B-16 batch 32 (about 5 minutes in all), ``--repeats 7`` for
tighter figures.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchutil as bu  # noqa: E402

NAME = "bench_inference"

MODELS = {
    "ViT-B-16": dict(model_name="ViT-B-16", pretrained=None, image_size=224, image_adapter_layers=[3, 6, 9, 12]),
    "sdmad-tiny": dict(model_name="sdmad-tiny", pretrained=None, image_size=64, image_adapter_layers=[2, 3, 5, 6]),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-16", "sdmad-tiny"], choices=sorted(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32], help="for sdmad-tiny")
    parser.add_argument(
        "--vit-batch-sizes",
        nargs="+",
        type=int,
        default=[1, 8],
        help="for ViT-B-16 (default 1 8: batch 32 adds ~4 min on 2 CPU cores; pass 1 8 32 for it)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=sorted(bu.CLOCKS),
        help="wall time, or CPU time of the calling thread (use with --threads 1 on a busy machine)",
    )
    bu.add_output_argument(parser)
    parser.add_argument("--smoke", action="store_true", help="tiny model, batches 1 and 2, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.batch_sizes, args.warmup, args.repeats = ["sdmad-tiny"], [1, 2], 1, 1
        args.vit_batch_sizes = [1]
    return args


def flop_counts(detector: Any) -> dict[str, float]:
    """Analytic forward FLOPs per image (2 per multiply-add) of the image tower and of the image adapters."""
    from sdmad_monai.networks.backbone import image_blocks

    visual = detector.backbone.visual
    size = detector.image_size
    patch = visual.conv1.kernel_size[0]
    tokens = (size // patch) ** 2 + 1
    width = visual.conv1.out_channels
    blocks = image_blocks(detector.backbone)
    block_flops = 0.0
    for block in blocks:
        matrices = sum(p.numel() for p in block.parameters() if p.ndim == 2)
        block_flops += tokens * (2 * matrices + 4 * tokens * width)  # linear layers + QK^T and AV
    embed = 2 * visual.conv1.weight.numel() * (tokens - 1)
    head = 2 * visual.proj.numel() if getattr(visual, "proj", None) is not None else 0
    adapters = sum(
        tokens * 2 * sum(p.numel() for p in adapter.parameters() if p.ndim == 2)
        for adapter in detector.image_adapters.values()
    )
    backbone = block_flops + embed + head
    return {
        "backbone_gflops_per_image": backbone / 1e9,
        "adapter_gflops_per_image": adapters / 1e9,
        "adapter_flop_fraction": adapters / backbone,
        "tokens": tokens,
    }


def bench_model(key: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from sdmad_monai.networks import SignDrivenDetector
    from sdmad_monai.networks.backbone import load_clip

    spec = MODELS[key]
    device = torch.device(args.device)
    detector = SignDrivenDetector(**spec).to(device).eval()  # eval() computes text features + sign selection once
    bare, _ = load_clip(spec["model_name"], None, spec["image_size"], seed=0, device=device)
    bare.eval()

    calls = {"text_path_encode": 0, "backbone_encode_text": 0, "text_state_recomputed": 0}
    original_encode = detector._text_path.encode
    original_encode_text = detector.backbone.encode_text
    original_compute = detector._compute_text_state

    def counting_encode(tokens):
        calls["text_path_encode"] += 1
        return original_encode(tokens)

    def counting_encode_text(*a, **k):
        calls["backbone_encode_text"] += 1
        return original_encode_text(*a, **k)

    def counting_compute():
        calls["text_state_recomputed"] += 1
        return original_compute()

    detector._text_path.encode = counting_encode
    detector.backbone.encode_text = counting_encode_text
    detector._compute_text_state = counting_compute

    def run_detector(x):
        return detector(x)

    def run_disabled(x):
        with detector.adapters_disabled():
            return F.normalize(detector.backbone.encode_image(x), dim=-1)

    def run_bare(x):
        return F.normalize(bare.encode_image(x), dim=-1)

    flops = flop_counts(detector)
    rows = []
    generator = torch.Generator().manual_seed(0)
    for batch in args.vit_batch_sizes if key == "ViT-B-16" else args.batch_sizes:
        images = torch.randn(batch, 3, spec["image_size"], spec["image_size"], generator=generator).to(device)
        with torch.no_grad():
            detector_calls_before = dict(calls)
            timings = bu.time_interleaved(
                {
                    "detector": functools.partial(run_detector, images),
                    "disabled": functools.partial(run_disabled, images),
                    "bare": functools.partial(run_bare, images),
                },
                args.warmup,
                args.repeats,
                args.clock,
            )
        text_calls = {name: calls[name] - detector_calls_before[name] for name in calls}
        det, dis, bare_t = (timings[n]["median_s"] for n in ("detector", "disabled", "bare"))
        row = {
            "batch_size": batch,
            "timings": timings,
            "detector_ms_per_batch": det * 1e3,
            "disabled_ms_per_batch": dis * 1e3,
            "bare_ms_per_batch": bare_t * 1e3,
            "ratio_vs_adapters_disabled": det / dis,
            "ratio_vs_bare": det / bare_t,
            "ratio_vs_bare_over_adapter_flops": det / bare_t / (1 + flops["adapter_flop_fraction"]),
            "text_calls_during_timing": text_calls,
            "detector_slices_per_s": batch / det,
        }
        rows.append(row)
        print(
            f"{key:>10} batch {batch:>3}: detector {bu.fmt_ms(det)}  adapters-off {bu.fmt_ms(dis)}  bare "
            f"{bu.fmt_ms(bare_t)}  ratio vs off {row['ratio_vs_adapters_disabled']:.3f}  vs bare "
            f"{row['ratio_vs_bare']:.3f}  (/ adapter FLOPs {row['ratio_vs_bare_over_adapter_flops']:.3f})  "
            f"text calls {sum(text_calls.values())}",
            flush=True,
        )
    return {"model": key, "spec": spec, "flops": flops, "rows": rows}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bu.set_threads(args.threads)
    import torch

    info = bu.machine_info()
    print(
        f"machine: {info['cpu_count']} CPUs, torch threads {info['torch_threads']}, GPU {info['gpu']}; "
        f"torch {torch.__version__}; load {info['load_average_1min']}",
        flush=True,
    )
    models = [bench_model(key, args) for key in args.models]
    target = 1.05
    result = {
        "benchmark": NAME,
        "command": bu.command_line(argv),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "target": {"ratio_vs_bare_max": target},
        "models": models,
        "summary": {
            m["model"]: {
                r["batch_size"]: {
                    "ratio_vs_adapters_disabled": round(r["ratio_vs_adapters_disabled"], 4),
                    "ratio_vs_bare": round(r["ratio_vs_bare"], 4),
                    "ratio_vs_bare_over_adapter_flops": round(r["ratio_vs_bare_over_adapter_flops"], 4),
                    "text_calls": sum(r["text_calls_during_timing"].values()),
                }
                for r in m["rows"]
            }
            for m in models
        },
    }
    return bu.finish(NAME, result, args.smoke, args.output)


if __name__ == "__main__":
    main()
