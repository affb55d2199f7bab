"""Fixtures of the handler tests: matplotlib figures closed after each test, and one ProtocolReport run on the
hand-made evaluation of :mod:`protocol_run` shared by the report and figure tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from ignite.engine import Engine
from protocol_run import DEMO_DATA, batches, evaluator, make_report

from sdmad_monai.handlers import ProtocolReport
from sdmad_monai.networks.backbone import DEMO_PRETRAINED


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def run_report(tmp_path_factory) -> tuple[Engine, Path, ProtocolReport]:
    tmp_path = tmp_path_factory.mktemp("protocol")
    engine = evaluator()
    report = make_report(tmp_path, backbone={"pretrained": DEMO_PRETRAINED}, data_settings=DEMO_DATA)
    report.attach(engine)
    engine.run(batches(), max_epochs=2)  # two epochs: the second must start from a reset collection
    return engine, tmp_path / "report", report
