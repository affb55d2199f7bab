"""MONAI inferers that ask the detector for what a workflow needs.

- :class:`DetectorInferer` calls ``network(inputs, output=...)``; with ``output="all"`` the trainer's loss receives
  the features Eq. 3-5 need. Works through ``DistributedDataParallel`` (it calls the wrapper's ``forward``).
- :class:`ProtocolInferer` scores one batch as the columns of the paper's Tables 2-3 at once: the trained model
  (``sdmad``), the same model without sign selection (``sdmad_no_ss``) and the zero-shot CLIP baseline (``clip``:
  adapters off, no sign selection).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from monai.inferers import Inferer

from .networks.detector import SignDrivenDetector
from .networks.outputs import DetectorOutput

__all__ = ["DetectorInferer", "ProtocolInferer", "VARIANTS", "VolumeInferer"]

#: Evaluation variants of :class:`ProtocolInferer`, in the order of the paper's table columns.
VARIANTS = ("clip", "sdmad_no_ss", "sdmad")


class DetectorInferer(Inferer):
    """``network(inputs, output=output, maps=maps)``.

    Args:
        output: ``"scores"``, ``"predictions"`` or ``"all"`` (see :meth:`SignDrivenDetector.forward`).
        maps: with ``output="all"``, compute the anomaly maps too (``False`` when nothing downstream uses them).
    """

    def __init__(self, output: str = "all", maps: bool = True) -> None:
        super().__init__()
        self.output = output
        self.maps = bool(maps)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return network(inputs, *args, output=self.output, maps=self.maps, **kwargs)


class ProtocolInferer(Inferer):
    """Score a batch for several evaluation variants; returns ``{variant: DetectorOutput}``.

    The trained variants share one image-encoder pass; ``clip`` needs a second pass with the adapters off.

    Each variant's dict is :meth:`SignDrivenDetector.score` ``"all"`` (``sdmad``: plus the anomaly maps, exactly what
    ``detector(inputs, output="all")`` returns). ``keep`` is the prompt mask the variant was scored with: sign
    selection's for ``sdmad``, all ``True`` for ``sdmad_no_ss`` and ``clip``. Those two also carry
    ``sign_selection_keep`` ``[P]``: what sign selection (Eq. 6, with its fallback) keeps for their prompt features
    (adapters on for ``sdmad_no_ss``, off for ``clip``), taken from the detector's cached text state, so reports can
    show which prompts the selection would drop (it is the same tensor every batch; nothing is recomputed).

    Args:
        variants: any of :data:`VARIANTS`.
    """

    def __init__(self, variants: Sequence[str] = VARIANTS) -> None:
        super().__init__()
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            raise ValueError(f"Unknown evaluation variants {unknown or list(variants)}; choose from {list(VARIANTS)}.")
        self.variants = tuple(variants)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> dict[str, DetectorOutput]:
        detector = getattr(network, "module", network)
        if not isinstance(detector, SignDrivenDetector):
            raise TypeError(f"ProtocolInferer needs a SignDrivenDetector, got {type(detector).__name__}.")
        results: dict[str, DetectorOutput] = {}
        if "sdmad" in self.variants or "sdmad_no_ss" in self.variants:
            features, captured = detector.encode_image_with_tokens(inputs)
            text = detector.text_state()
            if "sdmad" in self.variants:  # as detector(inputs, output="all"), maps included
                results["sdmad"] = detector.score_with_maps(features, captured, inputs.shape[-2:], text)
            if "sdmad_no_ss" in self.variants:
                every = cast(DetectorOutput, detector.score(features, text._replace(keep=torch.ones_like(text.keep))))
                results["sdmad_no_ss"] = dataclasses.replace(every, sign_selection_keep=text.keep)
        if "clip" in self.variants:
            with detector.adapters_disabled():
                text = detector.text_state()
                every = cast(
                    DetectorOutput,
                    detector.score(detector.encode_image(inputs), text._replace(keep=torch.ones_like(text.keep))),
                )
                results["clip"] = dataclasses.replace(every, sign_selection_keep=text.keep)
        return {variant: results[variant] for variant in self.variants}


class VolumeInferer(Inferer):
    """Score whole volumes: for each :class:`~sdmad_monai.inference.PreparedVolume` of a batch,
    :func:`~sdmad_monai.inference.score_volume` (the slices in batches of ``batch_size``); a
    :class:`~sdmad_monai.inference.FailedVolume` passes through, and a volume whose scoring fails for a reason of
    the user's (non-finite scores) becomes one. Returns the list of :class:`~sdmad_monai.inference.VolumeResult` /
    ``FailedVolume``, in the batch's order.

    Args:
        batch_size: slices per forward pass.
        anomaly_maps: compute the per-slice anomaly maps too (for the 3D map and the overlays).
    """

    def __init__(self, batch_size: int = 16, anomaly_maps: bool = False) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.anomaly_maps = bool(anomaly_maps)

    # monai's Inferer.__call__ types ``inputs`` as a Tensor; the volume evaluator's batches are lists of volumes
    def __call__(  # type: ignore[override]
        self, inputs: Sequence[Any], network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> list[Any]:
        from .inference import FailedVolume, score_volume

        if not isinstance(network, SignDrivenDetector):
            raise TypeError(f"VolumeInferer needs a SignDrivenDetector, got {type(network).__name__}.")

        outcomes: list[Any] = []
        for volume in inputs:
            if isinstance(volume, FailedVolume):
                outcomes.append(volume)
                continue
            try:
                outcomes.append(score_volume(network, volume, self.batch_size, anomaly_maps=self.anomaly_maps))
            except Exception as error:
                outcomes.append(FailedVolume.from_error(volume.source, error))
        return outcomes
