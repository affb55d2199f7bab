"""Volume-level inference: one function from a volume on disk to per-slice results and study-level findings.

Every inference entry point runs the same two steps, :func:`prepare_volume` (read the requested slices, refuse what
cannot be assessed, preprocess) and :func:`score_volume` (Eq. 7 scores, Eq. 8 predictions, calibrated probabilities,
study findings): the MONAI Deploy operator, the MONAI Label task and the PACS commands through :func:`infer_volume`,
``configs/inference.json`` as a MONAI evaluator (:class:`PrepareVolumed`, :class:`~sdmad_monai.inferers.VolumeInferer`,
:class:`~sdmad_monai.handlers.VolumeResultsWriter`); none re-implements preprocessing or scoring.

Study-level aggregation (:func:`study_findings`), per category over the processed slices:

- study score = the highest slice score (Eq. 7): a finding is as strong as its clearest slice;
- study probability = the highest slice probability, for a calibrated checkpoint (:mod:`sdmad_monai.calibration`);
- study finding = 1 if at least one slice is positive by the category's decision rule (Eq. 8, the anchor rule, by
  default; a calibrated-probability threshold under an operating point); the positive slices are listed, so a
  reader can go to them; ``eq8_finding`` is always Eq. 8's.

With ``anomaly_maps=True`` the detector's per-slice anomaly maps are kept too, and :func:`write_volume_results` writes
for each volume a 3D anomaly-map NIfTI on the scan's voxel grid with the scan's affine
(:mod:`sdmad_monai.anomaly_volume`; slices not processed are 0, the processed ones are listed in the header and a
JSON sidecar) and PNG overlays of the highest-scoring and a seeded random sample of slices
(:mod:`sdmad_monai.visualize`).

Nothing wrong passes as "no finding": a slice that is blank, constant or mostly NaN, or non-finite model scores,
raise :class:`NotAssessableError` for that volume (:func:`slice_problem`); :func:`infer_volumes` then writes the
other volumes' results, lists the failed ones with their reasons in ``findings.json`` and ends with
:class:`VolumesFailedError`.

The package: :mod:`.results` (VolumeResult, study aggregation, not-assessable checks), :mod:`.volume` (prepare,
score, infer one volume), :mod:`.outputs` (files written per volume and per run), :mod:`.run` (many volumes).
"""

from __future__ import annotations

from .outputs import (
    OVERLAY_SCOPES,
    clear_previous_outputs,
    find_volumes,
    offer_volume_slices,
    volume_stem,
    volume_stems,
    write_volume_maps,
    write_volume_results,
)
from .results import (
    Finding,
    NotAssessableError,
    StudyFindings,
    VolumeResult,
    VolumesFailedError,
    slice_problem,
    study_findings,
)
from .run import VolumeResultsCollector, infer_volumes
from .volume import (
    FailedVolume,
    PreparedVolume,
    PrepareVolumed,
    check_volume_inputs,
    collate_volumes,
    infer_volume,
    prepare_volume,
    prepare_volume_batch,
    score_volume,
    volume_datalist,
)

__all__ = [
    "FailedVolume",
    "Finding",
    "StudyFindings",
    "NotAssessableError",
    "PrepareVolumed",
    "PreparedVolume",
    "VolumeResult",
    "VolumeResultsCollector",
    "VolumesFailedError",
    "check_volume_inputs",
    "clear_previous_outputs",
    "collate_volumes",
    "find_volumes",
    "infer_volume",
    "infer_volumes",
    "prepare_volume",
    "prepare_volume_batch",
    "score_volume",
    "slice_problem",
    "study_findings",
    "volume_datalist",
    "volume_stem",
    "volume_stems",
    "OVERLAY_SCOPES",
    "offer_volume_slices",
    "write_volume_maps",
    "write_volume_results",
]
