"""Shared helpers of the benchmark scripts: machine description, timing, peak memory, result files.

Not a test module and not part of the package; the scripts put this folder on ``sys.path`` themselves.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Where a run writes its result unless ``--output`` says otherwise: ignored by git, so that running a benchmark
#: leaves the tree clean. ``benchmarks/results/`` holds the recorded results RESULTS.md cites (copied there by hand).
OUTPUT_DIR = Path(__file__).resolve().parent / "output"


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--output`` option every script shares (default: :data:`OUTPUT_DIR`, see :func:`write_result`)."""
    parser.add_argument(
        "--output",
        default=None,
        help="result .json file or folder (default: benchmarks/output/, ignored by git; "
        "copy a run to record into benchmarks/results/)",
    )


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run (interpreter, script, arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "<in-process>"
    return shlex.join([sys.executable, script, *args])


def machine_info() -> dict[str, Any]:
    """CPU count, torch threads, GPU, versions, date: recorded with every result."""
    import torch

    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    for name in ("open_clip", "monai", "numpy", "nibabel", "h5py", "pydicom", "ignite", "sdmad_monai"):
        try:
            module = __import__(name)
            info["versions"][name] = getattr(module, "__version__", "?")
        except Exception:  # a missing optional package is simply not listed
            pass
    return info


def time_call(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] | None = None) -> dict:
    """Median (and min / all) wall time in seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return summarise(times)


def summarise(times: Sequence[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": [round(t, 6) for t in times]}


#: Clocks of :func:`time_interleaved`: wall time, or the CPU time of the calling thread (with ``--threads 1`` all of
#: torch's work runs on that thread, so the figure does not count time spent waiting for a core on a busy machine).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, clock: str = "wall"
) -> dict[str, dict]:
    """Time several functions round-robin (one call of each per round), so that load drift hits all alike."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = now()
            fn()
            times[name].append(now() - start)
    return {name: summarise(values) for name, values in times.items()}


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """Current resident set size in MiB (from /proc; NaN where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (``VmHWM``; Linux >= 4.0: write 5 to ``/proc/self/clear_refs``),
    so that :func:`peak_rss_since_reset_mib` measures a phase on its own; ``False`` where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_mib() -> float:
    """``VmHWM`` of this process in MiB: the peak resident set size since :func:`reset_peak_rss` (or since start)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return float("nan")
    return float("nan")


def run_worker(script: Path, args: Sequence[str], timeout: float | None = None) -> dict:
    """Run ``script --worker args`` in a fresh interpreter; it prints one JSON line last, which is returned."""
    command = [sys.executable, str(script), "--worker", *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(
            f"worker {shlex.join(command)} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
        )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker {shlex.join(command)} printed no JSON result:\n{completed.stdout}")
    return json.loads(lines[-1])


def write_result(name: str, data: dict, output: str | Path | None) -> Path:
    """Write ``data`` atomically to ``output`` (a ``.json`` file or a folder) or ``benchmarks/output/<name>.json``."""
    from sdmad_monai.utils import atomic_write_json

    if output is None:
        path = OUTPUT_DIR / f"{name}.json"
    else:
        path = Path(output)
        if path.suffix != ".json":
            path = path / f"{name}.json"
    atomic_write_json(path, data)
    return path


def finish(name: str, result: dict, smoke: bool, output: str | Path | None) -> dict:
    """Write a script's result (``<name>_smoke.json`` for a ``--smoke`` run, see :func:`write_result`), say where,
    and return it."""
    path = write_result(name + ("_smoke" if smoke else ""), result, output)
    print(f"wrote {path}")
    return result


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms"
