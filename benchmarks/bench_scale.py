"""Evaluation at scale: 1 000 and 10 000 synthetic slices through the tiny detector, metrics streamed.

Each size runs in its own fresh interpreter (``--worker``): an ignite ``Engine`` whose process function draws a batch
of random CLIP-normalised slices and random multi-hot labels, scores it with
:class:`~sdmad_monai.inferers.ProtocolInferer` (the three evaluation variants), and
:class:`~sdmad_monai.handlers.ProtocolReport` collects the per-slice numbers and writes ``metrics.json``,
``predictions.csv``, ``roc.png`` and ``similarity_heatmap.png`` at the end (into a temporary folder). Images are
generated per batch and never kept, as a streaming data loader would.

Reported per size: time of the run (scoring + collection), time of the report writing, peak RSS (``ru_maxrss``) after
setup and one warm-up batch and at the end; then the 10k/1k ratios: time should be ~10 (linear), memory ~1 (flat).

Run: ``python benchmarks/bench_scale.py`` (about 1-2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchutil as bu  # noqa: E402

NAME = "bench_scale"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--in-process", action="store_true", help="no subprocess per size (memory is then cumulative)")
    parser.add_argument("--no-figures", action="store_true", help="skip roc.png and similarity_heatmap.png")
    bu.add_output_argument(parser)
    parser.add_argument("--smoke", action="store_true", help="40 and 80 slices, batch 20, in-process, no figures")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.batch_size, args.in_process, args.no_figures = [40, 80], 20, True, True
    return args


def run_size(size: int, batch_size: int, figures: bool = True) -> dict[str, Any]:
    import torch
    from ignite.engine import Engine

    from sdmad_monai.handlers import ProtocolReport
    from sdmad_monai.inferers import ProtocolInferer
    from sdmad_monai.networks import SignDrivenDetector

    detector = SignDrivenDetector.from_preset("tiny").eval()
    inferer = ProtocolInferer()
    k = detector.num_categories
    generator = torch.Generator().manual_seed(size)
    text_calls = {"n": 0}
    original = detector._compute_text_state

    def counted():
        text_calls["n"] += 1
        return original()

    detector._compute_text_state = counted

    def batches(count: int):
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            yield {
                "image": torch.randn(n, 3, detector.image_size, detector.image_size, generator=generator),
                "label": (torch.rand(n, k, generator=generator) < 0.2).float(),
                "file": [f"volume{(start + i) // 16:05d}.h5" for i in range(n)],
                "slice": torch.arange(start, start + n) % 16,
            }

    @torch.no_grad()
    def process(engine: Engine, batch: dict) -> dict:
        return {"pred": inferer(batch["image"], detector), "label": batch["label"]}

    with tempfile.TemporaryDirectory() as tmp:
        report = ProtocolReport(
            tmp,
            detector.category_labels,
            prompt_texts=detector.prompt_texts,
            prompt_categories=detector.prompt_categories.tolist(),
        )
        engine = Engine(process)
        write_time = {"s": 0.0}
        original_write = report.write

        def timed_write(engine_=None):
            start = time.perf_counter()
            out = original_write(engine_)
            write_time["s"] = time.perf_counter() - start
            return out

        report.write = timed_write
        if not figures:  # neither build nor save roc.png / similarity_heatmap.png (this report only)
            original_write_figures = report.write

            def write_without_figures(engine_=None):
                import sdmad_monai.handlers.report as report_module

                saved = report_module.save_figure
                report_module.save_figure = lambda figure, path: None
                try:
                    return original_write_figures(engine_)
                finally:
                    report_module.save_figure = saved

            report.roc_figure = report.heatmap_figure = lambda: None
            report.write = write_without_figures
        report.attach(engine)
        # warm-up: one batch through the engine (first-call costs: matplotlib import, allocator growth)
        engine.run(list(batches(batch_size)), max_epochs=1)
        rss_setup = bu.peak_rss_mib()
        current_setup = bu.current_rss_mib()
        text_calls["n"] = 0
        start = time.perf_counter()
        engine.run(batches(size), max_epochs=1, epoch_length=-(-size // batch_size))
        total = time.perf_counter() - start
        metrics_file = Path(tmp) / "metrics.json"
        num_slices = json.loads(metrics_file.read_text())["num_slices"]
    return {
        "size": size,
        "num_slices_reported": num_slices,
        "batch_size": batch_size,
        "total_s": total,
        "write_s": write_time["s"],
        "figures": figures,
        "scoring_and_collect_s": total - write_time["s"],
        "slices_per_s": size / total,
        "text_state_computations": text_calls["n"],
        "batches": -(-size // batch_size),
        "peak_rss_after_setup_mib": rss_setup,
        "current_rss_after_setup_mib": current_setup,
        "peak_rss_mib": bu.peak_rss_mib(),
        "peak_rss_growth_mib": bu.peak_rss_mib() - rss_setup,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bu.set_threads(args.threads)
    if args.worker:
        print(json.dumps(run_size(args.size, args.batch_size)), flush=True)
        return {}
    info = bu.machine_info()
    print(
        f"machine: {info['cpu_count']} CPUs, torch threads {info['torch_threads']}; load {info['load_average_1min']}",
        flush=True,
    )
    rows = []
    for size in args.sizes:
        if args.in_process:
            row = run_size(size, args.batch_size, not args.no_figures)
        else:
            extra = (["--threads", str(args.threads)] if args.threads else []) + (
                ["--no-figures"] if args.no_figures else []
            )
            row = bu.run_worker(Path(__file__), ["--size", str(size), "--batch-size", str(args.batch_size), *extra])
        rows.append(row)
        print(
            f"{size:>6} slices: {row['total_s']:.2f} s ({row['slices_per_s']:.0f} slices/s; report writing "
            f"{row['write_s']:.2f} s)  peak RSS {row['peak_rss_mib']:.0f} MiB (after setup "
            f"{row['peak_rss_after_setup_mib']:.0f}, growth {row['peak_rss_growth_mib']:.1f})  text-state "
            f"computations {row['text_state_computations']} over {row['batches']} batches",
            flush=True,
        )
    small, large = rows[0], rows[-1]
    summary = {
        "size_ratio": large["size"] / small["size"],
        "time_ratio": large["total_s"] / small["total_s"],
        "scoring_time_ratio": large["scoring_and_collect_s"] / small["scoring_and_collect_s"],
        "peak_rss_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
        "peak_rss_growth_mib": {str(r["size"]): round(r["peak_rss_growth_mib"], 1) for r in rows},
    }
    print("summary:", json.dumps(summary))
    result = {
        "benchmark": NAME,
        "command": bu.command_line(argv),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "worker", "size")},
        "memory_method": "ru_maxrss "
        + ("in-process (cumulative)" if args.in_process else "of one subprocess per size"),
        "rows": rows,
        "summary": summary,
    }
    return bu.finish(NAME, result, args.smoke, args.output)


if __name__ == "__main__":
    main()
