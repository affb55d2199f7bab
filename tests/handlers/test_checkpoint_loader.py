"""DetectorCheckpointLoader: loads a detector checkpoint at engine start, refuses what does not fit."""

import pytest
import torch
from ignite.engine import Engine

from sdmad_monai.handlers import DetectorCheckpointLoader
from sdmad_monai.networks import DetectorStateError, SignDrivenDetector

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")


def start(loader):
    engine = Engine(lambda engine, batch: None)
    loader.attach(engine)
    engine.run([0], max_epochs=1)


def test_loads_the_adapters_when_the_engine_starts(tmp_path):
    trained = SignDrivenDetector.from_preset("tiny")
    with torch.no_grad():
        for parameter in trained.trainable_parameters():
            parameter.add_(0.05)
    path = trained.save(tmp_path / "model.pt")
    network = SignDrivenDetector.from_preset("tiny")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    trained.eval(), network.eval()
    with torch.no_grad():
        assert not torch.allclose(network(images), trained(images))
        start(DetectorCheckpointLoader(path, {"model": network}))
        assert torch.equal(network(images), trained(images))


def test_refuses_a_missing_or_empty_file_and_another_layout(tmp_path):
    network = SignDrivenDetector.from_preset("tiny")
    with pytest.raises(FileNotFoundError, match="model.pt does not exist"):
        start(DetectorCheckpointLoader(tmp_path / "model.pt", {"model": network}))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DetectorStateError, match="empty"):
        start(DetectorCheckpointLoader(tmp_path / "empty.pt", {"model": network}))
    other = SignDrivenDetector.from_preset("tiny", image_adapter_layers=[5, 6]).save(tmp_path / "other.pt")
    with pytest.raises(DetectorStateError, match="image_adapter_layers"):
        start(DetectorCheckpointLoader(other, {"model": network}))


def test_takes_exactly_one_detector():
    with pytest.raises(TypeError, match="load_dict must be"):
        DetectorCheckpointLoader("model.pt", {"model": torch.nn.Linear(2, 2)})
