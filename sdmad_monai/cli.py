"""The ``sdmad`` command line (``python -m sdmad_monai`` does the same), built with ``fire``.

Commands:

``process_folder``
    Run SD-MAD on the DICOM series of a folder that match the series rules and write one DICOM Comprehensive SR
    plus a JSON copy per series::

        sdmad process_folder --input_dir study/ --output_dir out/ --model models/model.pt \\
            [--rules rules.json] [--slices 0,5,10 | --slices all] [--axis axial] [--device cpu]

Errors (missing model or folder, bad rules file, no matching series, a broken series) end the command with one line
on stderr, ``sdmad: error: ...``, and exit status 1.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SdmadCommands", "main"]

logger = logging.getLogger("sdmad_monai.cli")


def _parse_slices(slices: Any) -> list[int] | str:
    """``fire`` turns ``--slices 0,5,10`` into a tuple and ``--slices 5`` into an int; accept those and strings."""
    if isinstance(slices, (list, tuple)):
        return [int(s) for s in slices]
    if isinstance(slices, int) and not isinstance(slices, bool):
        return [slices]
    return str(slices)


class SdmadCommands:
    """SD-MAD: few-shot multi-label anomaly detection on brain MRI (research use only)."""

    def process_folder(
        self,
        input_dir: str,
        output_dir: str,
        model: str = "models/model.pt",
        rules: str | None = None,
        slices: Any = "0,5,10",
        axis: str = "axial",
        device: str = "cpu",
        batch_size: int = 16,
        pretrained: str | None = None,
    ) -> list[str]:
        """Write one DICOM SR + JSON per series of ``input_dir`` that matches the series rules.

        Args:
            input_dir: folder of DICOM files (searched recursively; several series may share a folder).
            output_dir: where ``sdmad_sr_<SeriesInstanceUID>.dcm`` and ``.json`` are written.
            model: detector checkpoint (``SignDrivenDetector.save`` or a bundle checkpoint).
            rules: series rules JSON (default: the shipped axial brain MR rules).
            slices: canonical slice indices, e.g. ``0,5,10`` (the fastMRI+ policy), or ``all``.
            axis: slicing axis: axial, coronal or sagittal.
            device: torch device for inference.
            batch_size: slices per forward pass.
            pretrained: where the backbone weights are now, if the checkpoint names a local file that moved.

        Returns:
            The written files.
        """
        if not Path(input_dir).is_dir():
            raise FileNotFoundError(f"Input folder {input_dir} does not exist (expected a folder of DICOM files).")
        if not Path(model).is_file():
            raise FileNotFoundError(f"Model checkpoint {model} does not exist (pass --model path/to/model.pt).")
        # imported here so that the checks above answer without loading torch
        from .deploy.process import process_dicom_folder
        from .deploy.rules import load_series_rules

        def load_detector():  # called only once a series matches the rules
            from .networks.detector import SignDrivenDetector

            return SignDrivenDetector.load(model, map_location=device, pretrained=pretrained)

        series_rules = load_series_rules(rules)  # a bad rules file fails before anything is read
        written = process_dicom_folder(
            load_detector,
            input_dir,
            output_dir,
            rules=series_rules,
            slices=_parse_slices(slices),
            axis=axis,
            strict=True,
            batch_size=batch_size,
        )
        return [str(p) for p in written]


def _is_user_error(error: BaseException) -> bool:
    """Errors about the input (missing file, bad rules, bad checkpoint, no matching or broken series): the package
    raises ``FileNotFoundError``, ``ValueError`` subclasses and ``DetectorStateError`` for those."""
    if isinstance(error, (FileNotFoundError, ValueError)):
        return True
    detector_module = sys.modules.get("sdmad_monai.networks.detector")
    return detector_module is not None and isinstance(error, detector_module.DetectorStateError)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sdmad`` and ``python -m sdmad_monai``."""
    import fire

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(SdmadCommands(), command=list(argv) if argv is not None else None, name="sdmad")
    except Exception as error:
        if not _is_user_error(error):
            raise
        message = " ".join(str(error).split())
        print(f"sdmad: error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
