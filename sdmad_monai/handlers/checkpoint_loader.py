"""DetectorCheckpointLoader: MONAI's CheckpointLoader for SD-MAD detector checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

__all__ = ["DetectorCheckpointLoader"]


class DetectorCheckpointLoader(CheckpointLoader):
    """Load a trained detector's adapters into the workflow's network when the engine starts, as MONAI's
    :class:`~monai.handlers.CheckpointLoader` does (same arguments, same ``Events.STARTED`` timing), so that a
    bundle's ``network_def`` builds the architecture only and the workflow loads the weights.

    What it adds to MONAI's loader: the file is read by
    :meth:`~sdmad_monai.networks.SignDrivenDetector.read_checkpoint` (``weights_only=True``; a missing, empty, foreign
    or non-finite file is refused with one line naming it) and loaded strictly by the detector's ``load_state_dict``,
    which checks the recorded prompt bank, backbone and adapter layout against the network the config built (a
    checkpoint trained with another config set, e.g. ``paper.json``, is refused naming what differs). The
    checkpoint may be a :meth:`~sdmad_monai.networks.SignDrivenDetector.save` file or what the training's
    ``CheckpointSaver`` writes (``models/model.pt``).

    Args:
        load_path: the checkpoint file.
        load_dict: ``{"model": network}``: exactly one :class:`~sdmad_monai.networks.SignDrivenDetector`.
        name: logger name (default: the engine's logger).
        map_location: where tensors are read to before they are copied into the network (default ``"cpu"``).
    """

    def __init__(
        self,
        load_path: str | Path,
        load_dict: Mapping[str, torch.nn.Module],
        name: str | None = None,
        map_location: str | torch.device | None = None,
    ) -> None:
        from ..networks import SignDrivenDetector

        networks = list(load_dict.values()) if isinstance(load_dict, Mapping) else []
        if len(networks) != 1 or not isinstance(networks[0], SignDrivenDetector):
            got = {k: type(v).__name__ for k, v in load_dict.items()} if isinstance(load_dict, Mapping) else load_dict
            raise TypeError(
                f"DetectorCheckpointLoader's load_dict must be {{'model': <SignDrivenDetector>}}, got {got}."
            )
        super().__init__(
            load_path=str(load_path),
            load_dict=dict(load_dict),
            name=name,
            # monai annotates map_location as dict | None, but hands it to torch.load, which also takes a str/device
            map_location=map_location,  # type: ignore[arg-type]
        )

    def __call__(self, engine: Engine) -> None:
        """Read and load the checkpoint (called at ``Events.STARTED``)."""
        from ..networks import SignDrivenDetector

        (network,) = self.load_dict.values()
        # a str or device (or None), as __init__ takes it; monai types the attribute as a dict
        map_location = cast("str | torch.device", self.map_location or "cpu")
        state = SignDrivenDetector.read_checkpoint(self.load_path, map_location=map_location)
        network.load_state_dict(state)
        self.logger.info(f"Restored the detector's adapters from {self.load_path}")
