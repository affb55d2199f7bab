"""Results over seeds in one command: train and evaluate the bundle once per seed, then summarise (``sdmad sweep``).

For each seed, :func:`run_sweep` runs the bundle's two workflows, each in its own process, exactly as a user would::

    python -m monai.bundle run training   --config_file <config_file> --seed <s> --ckpt_dir ... <overrides>
    python -m monai.bundle run evaluating --config_file "[<config_file>, <evaluate_config>]" --seed <s> ... <overrides>

A process per step keeps the runs apart (the bundle calls ``set_determinism``, handlers hold global state) and shows
the bundle's own progress output; it is also written to the seed's ``train.log`` / ``evaluate.log``.

``seed`` changes the k-shot draw, the validation / test split and the adapter initialisation; the demo data come
from ``demo_seed`` and are the same for every seed. Layout of ``output_dir``::

    summary.json  summary.csv  summary.md  summary.png     the aggregate over the seeds (see below)
    demo/                          the generated demo data, shared by the seeds (when no dataset_dir is given)
    seed<s>/
        sweep_seed.json            settings, status, timings, commands and, for a failed seed, the reason
        models/                    ckpt_dir: model.pt, training_summary.json
        eval/                      eval_dir: metrics.json, predictions.csv, roc.png, ...
        runs/                      TensorBoard (the bundle's output_dir)
        cache/                     work_dir: splits.json, datalist.json, the k-shot file; cache/demo links to ../../demo
        training_summary.json      copy of models/training_summary.json
        kshot_<k>shot_seed<s>.json copy of the k-shot list (the support set: volumes, slices, labels)
        train.log  evaluate.log    the bundle's output

Each seed has its own ``work_dir``, hence its own ``splits.json``: the evaluation of a seed always reads the splits
its training used, and its ``metrics.json`` names that file.

A seed whose step fails is reported with its reason (the last error line of its log) and the other seeds still run;
:attr:`SweepResult.failed` lists them. A seed whose ``eval/metrics.json`` is complete and whose ``sweep_seed.json``
records the same settings (config files and their content, overrides) is skipped unless ``force``; a seed stopped
half-way with the same settings goes on from where it stopped (training resumes from ``models/resume.pt``, a finished
training is not redone); a seed whose settings changed, or any seed with ``force``, starts again from empty folders.

The summary over the seeds is :mod:`sdmad_monai.sweep_summary`'s.

Size: one workflow (per seed: two bundle processes, their logs, the resume record and the per-seed files);
the summary over seeds is :mod:`sdmad_monai.sweep_summary`.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from .overrides import BundleOptionError, check_overrides, parse_override_value
from .sweep_summary import aggregate, metrics_complete, summary_markdown, write_summary
from .utils import atomic_write_bytes, atomic_write_json

__all__ = [
    "RESERVED_KEYS",
    "SeedOutcome",
    "Step",
    "SweepError",
    "SweepFailed",
    "SweepResult",
    "parse_overrides",
    "parse_seeds",
    "run_bundle_step",
    "run_sweep",
]

logger = logging.getLogger(__name__)

#: bundle settings the sweep sets for each seed; an override of one of them is refused
RESERVED_KEYS = {
    "seed": "it is set for each seed from --seeds",
    "ckpt_dir": "each seed writes its checkpoint to <output_dir>/seed<s>/models",
    "output_dir": "each seed writes its TensorBoard logs to <output_dir>/seed<s>/runs (--output_dir is the sweep's)",
    "eval_dir": "each seed writes its evaluation to <output_dir>/seed<s>/eval",
    "work_dir": "each seed has its own work_dir, <output_dir>/seed<s>/cache (splits, k-shot list)",
    "config_file": "use --config_file and --evaluate_config",
    "run_id": "the sweep runs 'training' then 'evaluating'",
    "args_file": "pass the settings as overrides",
}
RECORD_NAME = "sweep_seed.json"
TRAINING, EVALUATING = "training", "evaluating"
LOG_NAMES = {TRAINING: "train.log", EVALUATING: "evaluate.log"}
# what a seed folder holds that the sweep wrote (cleared before a seed starts again)
_SEED_OUTPUTS = ("models", "eval", "runs", "cache", "training_summary.json", "train.log", "evaluate.log")
_KEY = re.compile(r"[A-Za-z_][\w.\-]*(#[\w.\-]+)*")


class SweepError(ValueError):
    """Bad sweep arguments (seeds, overrides, config files)."""


class SweepFailed(RuntimeError):
    """At least one seed failed; the message names them and their reasons. ``result`` is the :class:`SweepResult`."""

    def __init__(self, message: str, result: SweepResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Step:
    """One bundle run of one seed, given to the step runner.

    Attributes:
        name: ``"training"`` or ``"evaluating"`` (the bundle's run id).
        seed: the seed.
        command: the command line (``python -m monai.bundle run <name> ...``).
        folder: the seed's folder.
        log_file: where the step's output goes.
        echo: also show the output on stderr.
    """

    name: str
    seed: int
    command: tuple[str, ...]
    folder: Path
    log_file: Path
    echo: bool = True


#: runs a step and returns its exit status (0: success); :func:`run_bundle_step` by default
StepRunner = Callable[[Step], int]


@dataclass
class SeedOutcome:
    """What became of one seed: ``status`` is ``"done"`` (run now), ``"skipped"`` (complete before) or ``"failed"``."""

    seed: int
    status: str
    folder: Path
    seconds: float = 0.0
    error: str | None = None


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`."""

    output_dir: Path
    seeds: list[SeedOutcome]
    summary: dict[str, Any]
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[SeedOutcome]:
        return [outcome for outcome in self.seeds if outcome.status == "failed"]


# ---------------------------------------------------------------------------------------------------- arguments
def parse_seeds(seeds: Any) -> list[int]:
    """Seeds from ``fire``'s forms of ``--seeds``: ``0,1,2`` (a tuple), ``3`` (an int), ``"[0, 1]"`` (a list) or text
    such as ``"0,1 2"``.

    Raises:
        SweepError: no seed, a seed that is not a non-negative integer, or a seed given twice.
    """
    if isinstance(seeds, str):
        items: list[Any] = [item for item in re.split(r"[,\s]+", seeds.strip().strip("[]()")) if item]
    elif isinstance(seeds, (list, tuple)):
        items = list(seeds)
    else:
        items = [seeds]
    result = []
    for item in items:
        value = item
        if isinstance(item, str) and re.fullmatch(r"\d+", item.strip()):
            value = int(item)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SweepError(f"--seeds must be non-negative integers such as 0,1,2,3,4; got {item!r}.")
        if value in result:
            raise SweepError(f"--seeds names seed {value} twice.")
        result.append(value)
    if not result:
        raise SweepError("--seeds names no seed; pass e.g. --seeds 0,1,2,3,4.")
    return result


def _override_text(value: Any) -> str:
    """An override value as the bundle's command line reads it (``fire``: a Python literal, else text)."""
    return value if isinstance(value, str) else repr(value)


def parse_overrides(override: Any) -> dict[str, str]:
    """Bundle overrides from ``key=value`` texts (one, or a list), or a mapping.

    Values are kept as text and given to ``python -m monai.bundle run`` as ``--key=value``, where ``fire`` reads them
    as on any bundle command line: ``max_epochs=2`` is a number, ``slices=[0,5]`` a list, ``pretrained=None`` None,
    ``dataset_dir=/data/brain`` text. Nested ids use ``#`` (``train#dataloader#batch_size=4``). A mapping's non-text
    values are written as Python literals.

    Raises:
        SweepError: an item without ``=``, a bad key, a key given twice, or a key the sweep sets itself
            (:data:`RESERVED_KEYS`).
    """
    if override is None:
        return {}
    if isinstance(override, Mapping):
        pairs = [(str(key), _override_text(value)) for key, value in override.items()]
    else:
        items = [override] if isinstance(override, str) else list(override)
        pairs = []
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise SweepError(f"--override takes key=value (e.g. --override max_epochs=2); got {item!r}.")
            key, value = item.split("=", 1)
            pairs.append((key.strip(), value))
    result: dict[str, str] = {}
    for key, value in pairs:
        if key.startswith("--"):
            key = key[2:]
        if not _KEY.fullmatch(key):
            raise SweepError(
                f"--override key {key!r} is not a bundle config id (e.g. max_epochs, train#dataloader#batch_size)."
            )
        if key in RESERVED_KEYS:
            raise SweepError(f"--override {key}=... is not allowed: {RESERVED_KEYS[key]}.")
        if key in result:
            raise SweepError(f"--override gives {key} twice.")
        result[key] = value
    return result


def _as_list(files: Any, option: str) -> list[str]:
    items = [files] if isinstance(files, (str, os.PathLike)) else list(files or [])
    if not items:
        raise SweepError(f"{option} names no config file.")
    return [os.fspath(item) for item in items]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------- running
def _tail_reason(log_file: Path, limit: int = 400) -> str:
    """Why a step failed, from the end of its log: the first exception of the last traceback (the root cause, which
    the bundle re-raises as ``RuntimeError: Failed to evaluate ...``), else the last non-empty line."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 65536))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "no log"
    lines = re.split(r"\r\n|\r|\n", text)
    start = 0
    for index in reversed([i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]):
        start = index
        if "above exception" not in " ".join(lines[max(0, index - 3) : index]):
            break  # the first traceback of the last chain
    exception = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:|$)")
    errors = [line.strip() for line in lines[start:] if exception.match(line)]
    if errors:
        return errors[0][:limit]
    rest = [line.strip() for line in lines if line.strip()]
    return rest[-1][:limit] if rest else "no output"


def run_bundle_step(step: Step) -> int:
    """Run ``step.command`` in a new process; its output (stdout and stderr) goes to ``step.log_file`` and, with
    ``step.echo``, to this process's stderr as it comes (progress bars included). Returns the exit status.

    An interruption (Ctrl-C) stops the process and is raised again.
    """
    step.log_file.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with (
        open(step.log_file, "wb") as log,
        subprocess.Popen(
            list(step.command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
        ) as process,
    ):
        assert process.stdout is not None
        # stdout=PIPE with the default bufsize gives a BufferedReader (typeshed types it as IO[bytes]).
        stdout = cast(io.BufferedReader, process.stdout)
        try:
            while True:
                chunk = stdout.read1(65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if step.echo:
                    sys.stderr.write(decoder.decode(chunk))
                    sys.stderr.flush()
            return process.wait()
        except BaseException:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _copy(source: Path, target: Path) -> Path:
    return atomic_write_bytes(target, source.read_bytes())


def _clear_seed(folder: Path) -> None:
    for name in (*_SEED_OUTPUTS, RECORD_NAME):
        path = folder / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    for old in folder.glob("kshot_*shot_seed*.json"):
        old.unlink()


def _link_demo(cache: Path, shared_demo: Path) -> None:
    """``cache/demo`` -> the sweep's shared demo folder, so the demo data are generated once for all seeds (they depend
    on ``demo_seed`` only). Where links cannot be made, each seed generates its own copy."""
    link = cache / "demo"
    if link.is_symlink() or link.exists():
        return
    cache.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.relpath(shared_demo, cache), link, target_is_directory=True)
    except (OSError, NotImplementedError) as error:
        logger.debug("No link to the shared demo data (%s): this seed generates its own.", error)


def _kshot_file(cache: Path) -> Path | None:
    """The k-shot list the training wrote (named in ``cache/splits.json``)."""
    splits = _read_json(cache / "splits.json")
    if isinstance(splits, dict):
        named = (splits.get("files") or {}).get("kshot")
        if named and Path(named).is_file():
            return Path(named)
    found = sorted(cache.glob("kshot_*shot_seed*.json"))
    return found[0] if len(found) == 1 else None


def _bundle_command(
    run_id: str, config_files: Sequence[str], seed: int, folder: Path, overrides: Mapping[str, str]
) -> tuple[str, ...]:
    config = repr(config_files[0]) if len(config_files) == 1 else json.dumps(list(config_files))
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, f"--config_file={config}", f"--seed={seed}"]
    command += [
        f"--ckpt_dir={str(folder / 'models')!r}",
        f"--output_dir={str(folder / 'runs')!r}",
        f"--work_dir={str(folder / 'cache')!r}",
    ]
    if run_id == EVALUATING:
        command.append(f"--eval_dir={str(folder / 'eval')!r}")
    command += [f"--{key}={value}" for key, value in overrides.items()]
    return tuple(command)


def run_sweep(
    seeds: Any,
    config_file: Any = "configs/train.json",
    evaluate_config: Any = "configs/evaluate.json",
    output_dir: str | os.PathLike = "sweep",
    overrides: Any = None,
    force: bool = False,
    echo: bool = True,
    step_runner: StepRunner | None = None,
) -> SweepResult:
    """Train and evaluate once per seed (see the module docstring), then write the summary files.

    Args:
        seeds: the seeds (any form :func:`parse_seeds` takes).
        config_file: the training config(s) (several are merged in order, e.g. ``train.json`` then ``paper.json``).
        evaluate_config: the evaluation config(s), merged after ``config_file`` for the evaluation.
        output_dir: the sweep's folder.
        overrides: bundle overrides for both steps (any form :func:`parse_overrides` takes).
        force: redo seeds that are already complete.
        echo: show the bundle's output (it always goes to the seed's log files).
        step_runner: runs one :class:`Step` and returns its exit status (default :func:`run_bundle_step`).

    Returns:
        The :class:`SweepResult` (its ``failed`` lists the seeds that failed).

    Raises:
        SweepError: bad seeds or overrides.
        FileNotFoundError: a config file does not exist.
    """
    seed_list = parse_seeds(seeds)
    override_map = parse_overrides(overrides)
    train_configs = _as_list(config_file, "--config_file")
    evaluate_configs = _as_list(evaluate_config, "--evaluate_config")
    for name in dict.fromkeys(train_configs + evaluate_configs):
        if not Path(name).is_file():
            raise FileNotFoundError(
                f"Config file {name} does not exist (run from the bundle folder or pass --config_file / "
                "--evaluate_config)."
            )
    try:  # before any seed runs: a mistyped override would otherwise be trained with, silently
        check_overrides(
            list(dict.fromkeys(train_configs + evaluate_configs)),
            {key: parse_override_value(value) for key, value in override_map.items()},
        )
    except BundleOptionError as error:
        raise SweepError(str(error)) from None
    runner = step_runner or run_bundle_step
    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "config_file": train_configs,
        "evaluate_config": evaluate_configs,
        "config_sha256": {name: _sha256(Path(name)) for name in dict.fromkeys(train_configs + evaluate_configs)},
        "overrides": override_map,
    }
    described = " ".join(f"{k}={v}" for k, v in override_map.items()) or "none"
    logger.info(
        "Sweep over %d seed(s) %s into %s (configs: %s + %s; overrides: %s)",
        len(seed_list),
        ", ".join(map(str, seed_list)),
        root,
        ", ".join(train_configs),
        ", ".join(evaluate_configs),
        described,
    )
    start = time.monotonic()
    outcomes = []
    for index, seed in enumerate(seed_list, 1):
        label = f"seed {index}/{len(seed_list)} (seed={seed})"
        outcome = _run_seed(
            seed, label, root, settings, train_configs, evaluate_configs, override_map, force, echo, runner
        )
        outcomes.append(outcome)
        if outcome.status != "skipped":
            logger.info(
                "%s: %s in %s (sweep elapsed %s)",
                label,
                "done" if outcome.status == "done" else "failed",
                _duration(outcome.seconds),
                _duration(time.monotonic() - start),
            )

    metrics = {o.seed: metrics_complete(o.folder / "eval" / "metrics.json") for o in outcomes if o.status != "failed"}
    aggregated = aggregate(metrics)
    summary = {
        "seeds": aggregated.pop("seeds"),
        "seeds_requested": seed_list,
        "failed": {str(o.seed): o.error for o in outcomes if o.status == "failed"},
        "std": aggregated.pop("std"),
        "n": aggregated.pop("n"),
        "settings": settings,
        **aggregated,
        "per_seed": {str(o.seed): _seed_files(o, root) for o in outcomes},
        "written": _now(),
    }
    files = write_summary(root, summary)
    failed = [o for o in outcomes if o.status == "failed"]
    logger.info(
        "Sweep finished in %s: %d of %d seed(s) complete%s. Summary: %s",
        _duration(time.monotonic() - start),
        len(summary["seeds"]),
        len(seed_list),
        f", {len(failed)} failed ({', '.join(str(o.seed) for o in failed)})" if failed else "",
        ", ".join(str(path) for path in files.values()),
    )
    return SweepResult(root, outcomes, summary, summary_markdown(summary), files)


def _seed_files(outcome: SeedOutcome, root: Path) -> dict[str, Any]:
    folder = outcome.folder
    entry: dict[str, Any] = {"status": outcome.status, "folder": os.path.relpath(folder, root)}
    for name, path in (
        ("metrics", folder / "eval" / "metrics.json"),
        ("checkpoint", folder / "models" / "model.pt"),
        ("training_summary", folder / "training_summary.json"),
    ):
        if path.is_file():
            entry[name] = os.path.relpath(path, root)
    kshot = sorted(folder.glob("kshot_*shot_seed*.json"))
    if kshot:
        entry["kshot"] = os.path.relpath(kshot[0], root)
    if outcome.error:
        entry["error"] = outcome.error
    return entry


def _run_seed(
    seed: int,
    label: str,
    root: Path,
    settings: dict[str, Any],
    train_configs: list[str],
    evaluate_configs: list[str],
    overrides: dict[str, str],
    force: bool,
    echo: bool,
    runner: StepRunner,
) -> SeedOutcome:
    folder = root / f"seed{seed}"
    record_path = folder / RECORD_NAME
    record = _read_json(record_path)
    same = isinstance(record, dict) and record.get("settings") == settings
    if same and not force and record.get("status") == "done" and metrics_complete(folder / "eval" / "metrics.json"):
        logger.info("%s: skipped, eval/metrics.json is complete for the same settings (--force redoes it)", label)
        return SeedOutcome(seed, "skipped", folder, float(record.get("seconds") or 0.0))
    if same and not force and folder.is_dir():
        logger.info("%s: going on from where the last run stopped (%s; same settings)", label, record.get("status"))
    if folder.exists() and (force or not same):
        why = "--force" if force else ("the settings changed" if isinstance(record, dict) else "no sweep record")
        if any(folder.iterdir()):
            logger.info("%s: starting again from empty folders (%s)", label, why)
        _clear_seed(folder)
        record = None
    folder.mkdir(parents=True, exist_ok=True)
    _link_demo(folder / "cache", root / "demo")
    steps = dict(record.get("steps") or {}) if isinstance(record, dict) else {}
    record = {
        "seed": seed,
        "settings": settings,
        "status": "running",
        "started": _now(),
        "steps": steps,
        "error": None,
    }
    atomic_write_json(record_path, record)
    start = time.monotonic()

    def fail(reason: str) -> SeedOutcome:
        record.update(status="failed", error=reason, finished=_now(), seconds=time.monotonic() - start)
        atomic_write_json(record_path, record)
        logger.error("%s: FAILED: %s", label, reason)
        return SeedOutcome(seed, "failed", folder, time.monotonic() - start, reason)

    plan = (
        (TRAINING, train_configs, "training"),
        (EVALUATING, train_configs + evaluate_configs, "evaluation"),
    )
    for run_id, configs, what in plan:
        previous = steps.get(run_id) or {}
        if (
            run_id == TRAINING
            and previous.get("status") == "done"
            and (folder / "models" / "model.pt").is_file()
            and (folder / "models" / "training_summary.json").is_file()
        ):
            logger.info("%s: training already done (models/model.pt), not redone", label)
            continue
        step = Step(
            run_id,
            seed,
            _bundle_command(run_id, configs, seed, folder, overrides),
            folder,
            folder / LOG_NAMES[run_id],
            echo,
        )
        steps[run_id] = {
            "status": "running",
            "command": list(step.command),
            "log": step.log_file.name,
            "started": _now(),
        }
        atomic_write_json(record_path, record)
        logger.info("%s: %s ... (log: %s)", label, run_id, step.log_file)
        step_start = time.monotonic()
        try:
            status = runner(step)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # the runner itself broke (e.g. python not found): this seed fails, others run
            status, reason = -1, f"{what} could not run: {type(error).__name__}: {error}"
        else:
            reason = f"{what} failed (exit status {status}): {_tail_reason(step.log_file)}"
        seconds = time.monotonic() - step_start
        steps[run_id].update(seconds=round(seconds, 3), exit_status=status)
        if status != 0:
            steps[run_id]["status"] = "failed"
            return fail(f"{reason}; log: {step.log_file}")
        if run_id == TRAINING:
            summary = folder / "models" / "training_summary.json"
            if not (folder / "models" / "model.pt").is_file() or not summary.is_file():
                steps[run_id]["status"] = "failed"
                return fail(
                    f"training ended without writing models/model.pt and training_summary.json; log: {step.log_file}"
                )
            _copy(summary, folder / "training_summary.json")
            kshot = _kshot_file(folder / "cache")
            if kshot is not None:
                _copy(kshot, folder / kshot.name)
            else:
                logger.warning("%s: no k-shot list found in %s; not copied", label, folder / "cache")
        elif metrics_complete(folder / "eval" / "metrics.json") is None:
            steps[run_id]["status"] = "failed"
            return fail(f"evaluation ended without a complete eval/metrics.json; log: {step.log_file}")
        steps[run_id]["status"] = "done"
        atomic_write_json(record_path, record)
        logger.info("%s: %s done in %s", label, run_id, _duration(seconds))
    seconds = time.monotonic() - start
    record.update(status="done", finished=_now(), seconds=round(seconds, 3))
    atomic_write_json(record_path, record)
    return SeedOutcome(seed, "done", folder, seconds)


# ---------------------------------------------------------------------------------------------------- summary
