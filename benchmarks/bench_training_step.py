"""Training step time and peak memory: cached text path (the default) vs full text re-encoding per step.

One step = ``detector(images, output="all")`` + ``SDMADLoss`` + ``backward`` + ``Adam.step``, batch 8, in training
mode (the text adapter on, so the adapted last text block runs with gradient every step).

Modes:

- ``cached`` (library default): ``detector._text_path`` runs the frozen text blocks once and only the adapted last
  block + head on every step;
- ``full``: ``detector._text_path.encode`` is replaced, in this script only, by ``detector.backbone.encode_text``
  (all text blocks re-run every step, the adapter hook still applies on the last block).

Each mode also runs with activation checkpointing of the frozen image blocks off and/or on
(``--activation-checkpointing off on``, the detector's ``activation_checkpointing`` switch) and in fp32 and/or under
bf16 autocast (``--precision fp32 bf16``): one configuration per fresh interpreter (``--worker``), so its memory
figures are its own. Memory is measured three ways:

- ``saved_for_backward_mib``: bytes of the tensors autograd keeps from forward to backward (``saved_tensors_hooks``,
  distinct storages, parameters excluded): exactly what checkpointing removes, and device-independent -- the same
  tensors a GPU would hold;
- ``peak_rss_step_mib``: peak resident memory during the steps above the resident memory just before them (Linux
  ``VmHWM``, reset through ``/proc/self/clear_refs`` after the model is built): activations, gradients, Adam state
  and allocator slack on CPU;
- with ``--device cuda``: ``torch.cuda.max_memory_allocated`` over the steps (model included), e.g. the paper's
  setting: ``--model ViT-L-14 --image-size 240 --adapter-layers 6 8 18 24 --modes cached --activation-checkpointing
  off on --precision fp32 bf16 --device cuda`` (compare with the paper's 4000 MiB).

Run: ``python benchmarks/bench_training_step.py`` (ViT-B-16 at 224 on CPU, about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchutil as bu  # noqa: E402

NAME = "bench_training_step"
MODES = ("cached", "full")
CHECKPOINTING = ("off", "on")
PRECISIONS = ("fp32", "bf16")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--adapter-layers", nargs="+", type=int, default=[3, 6, 9, 12])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--activation-checkpointing",
        nargs="+",
        default=["off"],
        choices=CHECKPOINTING,
        help="run each mode with the detector's activation_checkpointing off and/or on",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=PRECISIONS,
        help="fp32 and/or bf16 autocast for forward + loss",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the modes here, not in subprocesses (peak memory is then cumulative over the modes)",
    )
    bu.add_output_argument(parser)
    parser.add_argument("--smoke", action="store_true", help="tiny model, batch 2, one step, in-process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="cached", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--run-checkpointing", default="off", choices=CHECKPOINTING, help=argparse.SUPPRESS)
    parser.add_argument("--run-precision", default="fp32", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.image_size, args.adapter_layers = "sdmad-tiny", 64, [2, 3, 5, 6]
        args.batch_size, args.warmup, args.repeats, args.in_process = 2, 1, 1, True
    return args


def run_key(mode: str, checkpointing: str, precision: str) -> str:
    """Name of one configuration in the result's ``runs``: ``cached``, ``cached+ckpt``, ``cached+ckpt/bf16``..."""
    return mode + ("+ckpt" if checkpointing == "on" else "") + ("/bf16" if precision == "bf16" else "")


class SavedTensorBytes:
    """``saved_tensors_hooks`` that add up the bytes of the distinct storages autograd saves for backward, leaving out
    parameters (they are resident anyway); storages saved by several operations count once."""

    def __init__(self, exclude: Sequence[Any]) -> None:
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self.exclude:
            self.storages[pointer] = max(self.storages.get(pointer, 0), storage.nbytes())
        return tensor

    @staticmethod
    def unpack(tensor: Any) -> Any:
        return tensor

    @property
    def mib(self) -> float:
        return sum(self.storages.values()) / 2**20


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device} asked for, but torch {torch.__version__} sees no CUDA GPU on this machine; "
            "run with --device cpu, or on a machine with a GPU."
        )


def run_mode(
    args: argparse.Namespace, mode: str, checkpointing: str = "off", precision: str = "fp32"
) -> dict[str, Any]:
    """Build the detector, run warm-up + timed steps in ``mode``; returns times, text-call counts and peak memory."""
    import contextlib
    import gc

    import torch

    from sdmad_monai.losses import SDMADLoss
    from sdmad_monai.networks import SignDrivenDetector

    device = torch.device(args.device)
    rss_start = bu.peak_rss_mib()
    detector = SignDrivenDetector(
        model_name=args.model,
        pretrained=None,
        image_size=args.image_size,
        image_adapter_layers=args.adapter_layers,
        activation_checkpointing=checkpointing == "on",
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
    saved = SavedTensorBytes(list(detector.parameters()))

    def step():
        optimizer.zero_grad(set_to_none=True)
        saved.storages.clear()
        bf16 = precision == "bf16"
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast, torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            loss = loss_fn(detector(images, output="all"), labels)
        loss.backward()
        optimizer.step()
        return loss

    rss_built = bu.peak_rss_mib()
    gc.collect()
    rss_before_steps = bu.current_rss_mib()
    hwm_reset = bu.reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = dict(calls)
    timing = bu.time_call(step, args.warmup, args.repeats, sync)
    steps = args.warmup + args.repeats
    peak_since_reset = bu.peak_rss_since_reset_mib()
    result = {
        "mode": mode,
        "activation_checkpointing": checkpointing == "on",
        "precision": precision,
        "timing": timing,
        "step_ms": timing["median_s"] * 1e3,
        "text_calls_per_step": {k: (calls[k] - before[k]) / steps for k in calls},
        "saved_for_backward_mib": saved.mib,
        "rss_before_steps_mib": rss_before_steps,
        "peak_rss_step_mib": peak_since_reset - rss_before_steps if hwm_reset else None,
        "parameters_mib": sum(p.numel() * p.element_size() for p in detector.parameters()) / 2**20,
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
        print(json.dumps(run_mode(args, args.mode, args.run_checkpointing, args.run_precision)), flush=True)
        return {}
    info = bu.machine_info()
    print(
        f"machine: {info['cpu_count']} CPUs, torch threads {info['torch_threads']}, GPU {info['gpu']}; "
        f"load {info['load_average_1min']}",
        flush=True,
    )
    forwarded = [
        "--model",
        args.model,
        "--image-size",
        str(args.image_size),
        "--adapter-layers",
        *map(str, args.adapter_layers),
        "--batch-size",
        str(args.batch_size),
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
    ] + (["--threads", str(args.threads)] if args.threads else [])
    runs = {}
    for precision in args.precision:
        for checkpointing in args.activation_checkpointing:
            for mode in args.modes:
                key = run_key(mode, checkpointing, precision)
                start = time.perf_counter()
                if args.in_process:
                    runs[key] = run_mode(args, mode, checkpointing, precision)
                else:
                    extra = ["--mode", mode, "--run-checkpointing", checkpointing, "--run-precision", precision]
                    runs[key] = bu.run_worker(Path(__file__), forwarded + extra)
                r = runs[key]
                gpu = (
                    f"  GPU peak {r['cuda_max_memory_allocated_mib']:.0f} MiB"
                    if "cuda_max_memory_allocated_mib" in r
                    else ""
                )
                step_peak = "n/a" if r["peak_rss_step_mib"] is None else f"{r['peak_rss_step_mib']:.0f} MiB"
                print(
                    f"{key:>16}: step {bu.fmt_ms(r['step_ms'] / 1e3)}  saved for backward "
                    f"{r['saved_for_backward_mib']:.0f} MiB  peak RSS above pre-step {step_peak}  peak RSS "
                    f"{r['peak_rss_mib']:.0f} MiB (after build {r['peak_rss_after_build_mib']:.0f}){gpu}  "
                    f"text calls/step {r['text_calls_per_step']}  [{time.perf_counter() - start:.0f} s]",
                    flush=True,
                )
    modes = {key: r for key, r in runs.items() if key in MODES}  # checkpointing off, fp32: the text-path comparison
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
    checkpointing_summary = {}
    for mode in args.modes:
        for precision in args.precision:
            off, on = runs.get(run_key(mode, "off", precision)), runs.get(run_key(mode, "on", precision))
            if off is None or on is None:
                continue
            entry = {
                "step_ms_off": round(off["step_ms"], 1),
                "step_ms_on": round(on["step_ms"], 1),
                "step_time_ratio_on_over_off": round(on["step_ms"] / off["step_ms"], 3),
                "saved_for_backward_mib_off": round(off["saved_for_backward_mib"], 1),
                "saved_for_backward_mib_on": round(on["saved_for_backward_mib"], 1),
            }
            if off["peak_rss_step_mib"] is not None and on["peak_rss_step_mib"] is not None:
                entry["peak_rss_step_mib_off"] = round(off["peak_rss_step_mib"], 1)
                entry["peak_rss_step_mib_on"] = round(on["peak_rss_step_mib"], 1)
            if "cuda_max_memory_allocated_mib" in off:
                entry["cuda_peak_mib_off"] = round(off["cuda_max_memory_allocated_mib"], 1)
                entry["cuda_peak_mib_on"] = round(on["cuda_max_memory_allocated_mib"], 1)
            checkpointing_summary[run_key(mode, "off", precision)] = entry
    if checkpointing_summary:
        summary["activation_checkpointing"] = checkpointing_summary
    print("summary:", summary)
    result = {
        "benchmark": NAME,
        "command": bu.command_line(argv),
        "machine": info,
        "settings": {
            k: v
            for k, v in vars(args).items()
            if k not in ("output", "worker", "mode", "run_checkpointing", "run_precision")
        },
        "memory_method": "saved_for_backward_mib: distinct storages autograd saves for backward (parameters "
        "excluded); peak_rss_step_mib: VmHWM over the steps minus the RSS before them; peak_rss_mib: ru_maxrss of the "
        "process" + (" (in-process: cumulative)" if args.in_process else " (one fresh subprocess per configuration)"),
        "runs": runs,
        "modes": modes,
        "summary": summary,
    }
    return bu.finish(NAME, result, args.smoke, args.output)


if __name__ == "__main__":
    main()
