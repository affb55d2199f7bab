"""ResumeCheckpoint: saved after each epoch, kept after an interruption, restored exactly, removed on completion."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from sdmad_monai.handlers import ResumeCheckpoint

MAX_EPOCHS = 4
DATA = [
    (
        torch.randn(4, 3, generator=torch.Generator().manual_seed(i)),
        torch.randn(4, 2, generator=torch.Generator().manual_seed(100 + i)),
    )
    for i in range(3)
]


class Interrupt(Exception):
    pass


def make_model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    return model, optimizer


def make_trainer(model, optimizer, path, epochs_seen=None) -> Engine:
    def step(engine, batch):
        x, y = batch
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    engine = Engine(step)
    ResumeCheckpoint(path, {"network": model, "optimizer": optimizer}).attach(engine)
    if epochs_seen is not None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_seen.append(e.state.epoch))
    return engine


def same_state(a: dict, b: dict) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_file_written_after_each_epoch_and_removed_on_completion(tmp_path):
    path = tmp_path / "resume.pt"
    model, optimizer = make_model_and_optimizer()
    engine = make_trainer(model, optimizer, path)
    seen = []

    @engine.on(Events.EPOCH_COMPLETED)
    def check(e):  # registered after the handler's own save, so the file is there already
        state = torch.load(path, weights_only=True)
        seen.append((state["epoch"], state["iteration"]))
        assert same_state(state["network"], model.state_dict())

    engine.run(DATA, max_epochs=MAX_EPOCHS)
    assert seen == [(epoch, epoch * len(DATA)) for epoch in range(1, MAX_EPOCHS + 1)]
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_interrupted_run_resumes_with_identical_state(tmp_path):
    # reference: an uninterrupted run
    reference_model, reference_optimizer = make_model_and_optimizer()
    make_trainer(reference_model, reference_optimizer, tmp_path / "reference.pt").run(DATA, max_epochs=MAX_EPOCHS)

    # interrupted at epoch 2 (after the epoch-2 state was saved)
    path = tmp_path / "resume.pt"
    model, optimizer = make_model_and_optimizer()
    engine = make_trainer(model, optimizer, path)

    @engine.on(Events.EPOCH_COMPLETED(once=2))
    def crash(e):
        raise Interrupt("killed")

    with pytest.raises(Interrupt):
        engine.run(DATA, max_epochs=MAX_EPOCHS)
    assert path.is_file()
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 2 and saved["iteration"] == 2 * len(DATA)
    interrupted_network = copy.deepcopy(model.state_dict())
    interrupted_optimizer = copy.deepcopy(optimizer.state_dict())

    # a new run with a fresh model (other initialisation) picks it up
    fresh_model, fresh_optimizer = make_model_and_optimizer(seed=123)
    assert not torch.equal(fresh_model.weight, model.weight)
    epochs_seen = []
    resumed = make_trainer(fresh_model, fresh_optimizer, path, epochs_seen)
    restored = {}

    @resumed.on(Events.STARTED)
    def record(e):  # runs after the handler's restore
        restored["epoch"] = e.state.epoch
        restored["iteration"] = e.state.iteration
        restored["network"] = copy.deepcopy(fresh_model.state_dict())
        restored["optimizer"] = copy.deepcopy(fresh_optimizer.state_dict())

    resumed.run(DATA, max_epochs=MAX_EPOCHS)
    assert restored["epoch"] == 2 and restored["iteration"] == 2 * len(DATA)
    assert same_state(restored["network"], interrupted_network)
    assert same_state(restored["optimizer"], interrupted_optimizer)
    assert restored["optimizer"]["state"][0]["exp_avg"].abs().sum() > 0  # Adam moments were really restored
    assert epochs_seen == list(range(3, MAX_EPOCHS + 1))
    assert resumed.state.epoch == MAX_EPOCHS and resumed.state.iteration == MAX_EPOCHS * len(DATA)
    assert not path.exists()
    # the resumed run ends exactly where the uninterrupted one did
    assert same_state(fresh_model.state_dict(), reference_model.state_dict())
    assert same_state(fresh_optimizer.state_dict()["state"], reference_optimizer.state_dict()["state"])


def test_no_file_starts_afresh(tmp_path):
    model, optimizer = make_model_and_optimizer()
    epochs_seen = []
    make_trainer(model, optimizer, tmp_path / "absent.pt", epochs_seen).run(DATA, max_epochs=2)
    assert epochs_seen == [1, 2]


def test_corrupt_file_clear_error(tmp_path):
    path = tmp_path / "resume.pt"
    path.write_bytes(b"this is not a torch file")
    model, optimizer = make_model_and_optimizer()
    engine = make_trainer(model, optimizer, path)
    with pytest.raises(RuntimeError, match="resume file") as info:
        engine.run(DATA, max_epochs=2)
    assert str(path) in str(info.value)
    assert "delete it" in str(info.value)
    assert path.read_bytes() == b"this is not a torch file"  # left for the user to inspect


def test_missing_entry_clear_error(tmp_path):
    path = tmp_path / "resume.pt"
    model, optimizer = make_model_and_optimizer()
    torch.save({"network": model.state_dict(), "epoch": 1, "iteration": 3}, path)
    engine = make_trainer(model, optimizer, path)
    with pytest.raises(RuntimeError, match="'optimizer'") as info:
        engine.run(DATA, max_epochs=2)
    assert str(path) in str(info.value)


def test_best_metric_saver_record_and_random_states_are_restored(tmp_path):
    """What makes a resumed bundle run continue exactly (tests/bundle/test_bundle_resume.py runs the bundle): the
    validator's best metric, the best-model saver's record, the random states; other settings are refused."""
    from types import SimpleNamespace

    import numpy as np
    from ignite.handlers import Checkpoint
    from monai.transforms import Compose, RandFlip

    from sdmad_monai.handlers.resume import ResumeMismatchError

    class Saver:  # MONAI's CheckpointSaver keeps its record in an ignite Checkpoint
        def __init__(self):
            self._key_metric_checkpoint = Checkpoint({}, lambda *a: None, n_saved=1)

        def load_state_dict(self, state):
            self._key_metric_checkpoint.load_state_dict(state)

    path = tmp_path / "resume.pt"
    flip = RandFlip(prob=0.5)
    transforms = Compose([flip]).set_random_state(seed=7)
    model, optimizer = make_model_and_optimizer()
    evaluator = SimpleNamespace(state=SimpleNamespace(best_metric=0.75, best_metric_epoch=2))
    saver = Saver()
    saver._key_metric_checkpoint._saved = [Checkpoint.Item(0.75, "model.pt")]
    handler = ResumeCheckpoint(
        path,
        {"network": model},
        settings={"lr": 0.1},
        evaluator=evaluator,
        checkpoint_saver=saver,
        rng_objects=transforms,
    )
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.iteration = 2, 6
    handler.save(engine)
    expected = (torch.rand(3), np.random.rand(3), flip.R.rand(3))

    fresh_evaluator = SimpleNamespace(state=SimpleNamespace(best_metric=-1, best_metric_epoch=-1))
    fresh_saver = Saver()
    fresh_flip = RandFlip(prob=0.5)
    fresh = ResumeCheckpoint(
        path,
        {"network": model},
        settings={"lr": 0.1},
        evaluator=fresh_evaluator,
        checkpoint_saver=fresh_saver,
        rng_objects=Compose([fresh_flip]),
    )
    fresh.restore(Engine(lambda e, b: None))
    assert (fresh_evaluator.state.best_metric, fresh_evaluator.state.best_metric_epoch) == (0.75, 2)
    assert [tuple(i) for i in fresh_saver._key_metric_checkpoint._saved] == [(0.75, "model.pt")]
    got = (torch.rand(3), np.random.rand(3), fresh_flip.R.rand(3))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert np.array_equal(got[2], expected[2])

    other = ResumeCheckpoint(path, {"network": model}, settings={"lr": 0.2})
    with pytest.raises(ResumeMismatchError, match=r"lr 0.1 -> 0.2.*delete .*resume.pt"):
        other.restore(Engine(lambda e, b: None))
