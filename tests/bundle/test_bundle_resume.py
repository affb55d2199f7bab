"""Resuming the bundle's training: an interrupted run continues to the same best model as an uninterrupted one, keeps
the best model it already saved, and refuses to resume with other settings."""

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from sdmad_monai.handlers.resume import ResumeMismatchError

pytestmark = pytest.mark.filterwarnings("ignore")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SETTINGS = {"demo_volumes": 24, "k_shot": 1, "max_epochs": 4, "val_interval": 1, "validation_fraction": 0.3}


class Interrupt(Exception):
    pass


def _raised(kind: type[BaseException], call, *args, **kwargs) -> BaseException:
    """Run ``call`` and return the ``kind`` exception it raised (MONAI wraps errors of config expressions)."""
    with pytest.raises(Exception) as info:
        call(*args, **kwargs)
    error: BaseException | None = info.value
    while error is not None and not isinstance(error, kind):
        error = error.__cause__ or error.__context__
    assert error is not None, f"expected {kind.__name__}, got {info.value!r}"
    return error


def _workflow(root: Path, work_dir: Path, **override) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        bundle_root=str(root),
        work_dir=str(work_dir),
        **{**SETTINGS, **override},
    )
    workflow.initialize()
    return workflow


def _train(root: Path, work_dir: Path, interrupt_after: int | None = None, **override) -> ConfigWorkflow:
    workflow = _workflow(root, work_dir, **override)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    if interrupt_after is not None:

        @trainer.on(Events.EPOCH_COMPLETED(once=interrupt_after))  # after the resume file of this epoch was written
        def crash(engine):
            raise Interrupt("killed")

    workflow.run()
    return workflow


def _summary(root: Path) -> dict:
    return json.loads((root / "models" / "training_summary.json").read_text())


def _tensors(root: Path) -> dict:
    """Every tensor of the saved best model, by its path in the checkpoint."""
    found = {}

    def walk(value, prefix):
        if isinstance(value, torch.Tensor):
            found[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}/{key}")

    walk(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True), "")
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    reference = tmp_path_factory.mktemp("reference")
    _train(reference, work)
    interrupted = tmp_path_factory.mktemp("interrupted")
    _raised(Interrupt, _train, interrupted, work, interrupt_after=2)
    return work, reference, interrupted


def test_interrupted_then_resumed_training_matches_the_uninterrupted_run(runs):
    work, reference, interrupted = runs
    resume = interrupted / "models" / "resume.pt"
    assert resume.is_file()
    state = torch.load(resume, weights_only=True)
    assert state["epoch"] == 2 and "best_metric" in state and "random" in state
    saved_best = (interrupted / "models" / "model.pt").read_bytes()

    workflow = _train(interrupted, work)
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert not resume.exists()
    expected, got = _summary(reference), _summary(interrupted)
    assert got["best_validation_value"] == pytest.approx(expected["best_validation_value"], abs=1e-6)
    assert got["best_validation_epoch"] == expected["best_validation_epoch"]
    assert evaluator.state.best_metric == pytest.approx(expected["best_validation_value"], abs=1e-6)
    a, b = _tensors(reference), _tensors(interrupted)
    assert a and a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    if (
        expected["best_validation_epoch"] <= 2
    ):  # the best model saved before the interruption was not replaced by a worse one
        import io

        before = torch.load(io.BytesIO(saved_best), map_location="cpu", weights_only=True)
        weights = {k: v for k, v in before.items() if k != "_extra_state"}  # the calibration is added at the end
        assert weights and all(torch.equal(weights[k], b["/" + k]) for k in weights)


def test_resume_with_other_settings_is_refused(tmp_path):
    work = tmp_path / "work"
    _raised(Interrupt, _train, tmp_path, work, interrupt_after=1)
    resume = tmp_path / "models" / "resume.pt"
    message = str(_raised(ResumeMismatchError, _train, tmp_path, work, learning_rate=0.1, max_epochs=3))
    assert str(resume) in message and "learning_rate 0.001 -> 0.1" in message and "max_epochs 4 -> 3" in message
    assert "delete" in message
    assert resume.is_file()  # nothing lost: the interrupted run can still be resumed with its own settings
