"""AnchorLossLogger (log + TensorBoard scalars of the SDMADLoss components) and LossProgressBar."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine

from sdmad_monai.handlers import AnchorLossLogger, LossProgressBar
from sdmad_monai.losses import AnchorLoss, SDMADLoss

COMPONENTS = ("image_text", "anchor_positive", "anchor_negative", "remark31_violations")


class FakeWriter:
    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []
        self.flushes = 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1


def fake_outputs(seed: int, batch: int = 4, prompts: int = 5, dim: int = 8) -> tuple[dict, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "image_features": torch.randn(batch, dim, generator=generator),
        "text_features": torch.randn(prompts, dim, generator=generator),
        "prompt_categories": torch.tensor([-1, -1, 0, 1, 1]),
        "anchor_feature": torch.nn.functional.normalize(torch.randn(dim, generator=generator), dim=0),
    }
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    return outputs, labels


def training_engine(loss_function: SDMADLoss, iterations: int = 3) -> tuple[Engine, list]:
    recorded = []

    def step(engine, batch):
        outputs, labels = fake_outputs(engine.state.iteration)
        loss = loss_function(outputs, labels)
        recorded.append(dict(loss_function.components))
        return {"loss": loss}

    return Engine(step), recorded


def test_logs_and_writes_components(caplog):
    loss_function = SDMADLoss()
    writer = FakeWriter()
    engine, recorded = training_engine(loss_function)
    AnchorLossLogger(loss_function, summary_writer=writer, logger_name="test.anchor").attach(engine)
    with caplog.at_level(logging.INFO, logger="test.anchor"):
        engine.run(range(3), max_epochs=1)
    messages = [r for r in caplog.records if r.name == "test.anchor"]
    assert len(messages) == 3
    for iteration, (record, components) in enumerate(zip(messages, recorded), start=1):
        text = record.getMessage()
        assert text.startswith(f"iteration {iteration}:")
        assert f"image-text {components['image_text']:.4f}" in text
        assert f"anchor positive {components['anchor_positive']:.4f}" in text
        assert f"anchor negative {components['anchor_negative']:.4f}" in text
        assert f"Remark 3.1 violations {int(components['remark31_violations'])}" in text
    expected = [
        (f"loss/{name}", components[name], iteration)
        for iteration, components in enumerate(recorded, start=1)
        for name in COMPONENTS
    ]
    assert writer.scalars == expected
    assert writer.flushes == 3
    assert all(isinstance(value, float) for _, value, _ in writer.scalars)


def test_interval(caplog):
    loss_function = SDMADLoss()
    writer = FakeWriter()
    engine, _ = training_engine(loss_function)
    AnchorLossLogger(loss_function, summary_writer=writer, interval=2, logger_name="test.interval").attach(engine)
    with caplog.at_level(logging.INFO, logger="test.interval"):
        engine.run(range(5), max_epochs=1)
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "test.interval"] == [
        "iteration 2",
        "iteration 4",
    ]
    assert sorted({step for _, _, step in writer.scalars}) == [2, 4]


def test_nothing_logged_before_the_loss_ran(caplog):
    loss_function = SDMADLoss()
    writer = FakeWriter()
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.0)})  # never calls the loss
    AnchorLossLogger(loss_function, summary_writer=writer, logger_name="test.silent").attach(engine)
    with caplog.at_level(logging.INFO, logger="test.silent"):
        engine.run(range(2), max_epochs=1)
    assert not [r for r in caplog.records if r.name == "test.silent"]
    assert writer.scalars == [] and writer.flushes == 0


def test_log_only_without_writer(caplog):
    loss_function = SDMADLoss()
    engine, _ = training_engine(loss_function)
    AnchorLossLogger(loss_function, logger_name="test.logonly").attach(engine)
    with caplog.at_level(logging.INFO, logger="test.logonly"):
        engine.run(range(2), max_epochs=1)
    assert len([r for r in caplog.records if r.name == "test.logonly"]) == 2


@pytest.mark.parametrize("loss", [AnchorLoss(), torch.nn.MSELoss(), None])
def test_type_error_for_other_losses(loss):
    with pytest.raises(TypeError, match="SDMADLoss"):
        AnchorLossLogger(loss)


def test_loss_progress_bar_runs(capsys):
    losses = iter(torch.linspace(1.0, 0.1, 6))
    engine = Engine(lambda e, b: {"loss": next(losses)})
    bar = LossProgressBar()
    bar.attach(engine)
    engine.run(range(3), max_epochs=2)
    assert engine.state.iteration == 6
    shown = capsys.readouterr().err
    assert "loss=" in shown and "0.1" in shown  # the bar shows the iteration loss


def test_loss_progress_bar_decollated_output():
    engine = Engine(lambda e, b: [{"loss": torch.tensor(0.5)}, {"loss": torch.tensor(0.5)}])
    LossProgressBar(persist=False).attach(engine)
    engine.run(range(2), max_epochs=1)
    assert engine.state.iteration == 2
