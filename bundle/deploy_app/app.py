"""SD-MAD MONAI Deploy application: a folder of DICOM files in, one DICOM Comprehensive SR (+ JSON copy) per selected
series out, and with ``--anomaly-map`` the series' 3D anomaly map as a DICOM Parametric Map. Research use only.

Run locally (CPU or GPU)::

    python bundle/deploy_app -i <dicom folder> -o <output folder> -m <SignDrivenDetector checkpoint>
        [--rules site_rules.json] [--finding-codes site_codes.json] [--slices 0,5,10|all] [--axis axial]
        [--device auto|cpu|cuda] [--batch-size 16] [--allow-no-match] [--anomaly-map]

The SDK's ``-i/-o/-m`` may also come from ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` /
``HOLOSCAN_MODEL_PATH``, and the application's options from ``SDMAD_SERIES_RULES``, ``SDMAD_SLICES``, ``SDMAD_AXIS``,
``SDMAD_DEVICE``, ``SDMAD_BATCH_SIZE``, ``SDMAD_ALLOW_NO_MATCH``, ``SDMAD_ANOMALY_MAP`` (how a MONAI Application
Package is configured).

The operators below only move objects between ports; the SDK objects become series jobs in
``sdmad_monai.deploy.app_logic`` (tested without the SDK), and the rest is the series pipeline every source shares,
``sdmad_monai.deploy.pipeline``: the selection and its messages, ``run_jobs`` / ``run_series``
(``sdmad_monai.inference.infer_volume``), and the sinks ``write_inference_outcome`` (SR + JSON,
``sdmad_monai.deploy.sr.write_sr_report``) and ``write_outcome_anomaly_maps`` (``sdmad_monai.deploy.map_dicom``) -
the same functions as ``sdmad process_folder``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import (
    SelectedSeries,
    StudySelectedSeries,
)
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import (
    DICOMSeriesSelectorOperator,
)
from monai.deploy.operators.dicom_series_to_volume_operator import (
    DICOMSeriesToVolumeOperator,
)

from sdmad_monai.deploy.app_logic import (
    DeployAppOptions,
    infer_series_volumes,
    load_app_detector,
    resolve_checkpoint,
    select_study_series,
    series_volumes,
)
from sdmad_monai.deploy.pipeline import write_inference_outcome, write_outcome_anomaly_maps
from sdmad_monai.deploy.rules import SeriesRules

__all__ = [
    "SDMADAnomalyMapWriterOperator",
    "SDMADApp",
    "SDMADInferenceOperator",
    "SDMADSRWriterOperator",
    "SDMADSeriesSelectorOperator",
    "SDMADSeriesToVolumeOperator",
]

logger = logging.getLogger(__name__)

#: Selection name of the series the rules select.
SELECTION_NAME = "SD-MAD series rules"


class SDMADSeriesSelectorOperator(DICOMSeriesSelectorOperator):
    """The SDK selector with SD-MAD's series rules (``sdmad_monai/deploy/series_rules.json`` or a site's copy) in
    place of the SDK's rules format: every matching series of every study is selected.

    Named input: ``dicom_study_list``. Named output: ``study_selected_series_list``.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        rules: SeriesRules,
        strict: bool = True,
        source: str = "the input",
        **kwargs: Any,
    ):
        self._series_rules, self._strict, self._source = rules, strict, source
        super().__init__(fragment, *args, all_matched=True, **kwargs)

    def filter(self, selection_rules, dicom_study_list, all_matched=False, sort_by_sop_instance_count=False):
        """``StudySelectedSeries`` of the series that match the SD-MAD rules (the SDK's ``selection_rules`` are
        not used)."""
        selected = []
        for study, matching in select_study_series(dicom_study_list, self._series_rules, self._strict, self._source):
            study_selected = StudySelectedSeries(study)
            for series in matching:
                study_selected.add_selected_series(SelectedSeries(SELECTION_NAME, series))
            selected.append(study_selected)
        return selected


class SDMADSeriesToVolumeOperator(DICOMSeriesToVolumeOperator):
    """The SDK's series-to-volume conversion for *every* selected series (the base operator converts the first one
    only), after the command line's header checks.

    Named input: ``study_selected_series_list``. Named output: ``volumes`` (list of ``SeriesVolume``).
    """

    def setup(self, spec: OperatorSpec):
        spec.input(self.input_name_series)
        spec.output("volumes")

    def _convert(self, study, series):
        single = StudySelectedSeries(study)
        single.add_selected_series(SelectedSeries(SELECTION_NAME, series))
        image = self.convert_to_image([single])
        return image.asnumpy(), image.metadata()

    def compute(self, op_input, op_output, context):
        study_selected_series_list = op_input.receive(self.input_name_series) or []
        pairs = [
            (item.study, selected.series) for item in study_selected_series_list for selected in item.selected_series
        ]
        op_output.emit(series_volumes(pairs, self._convert), "volumes")


class SDMADInferenceOperator(Operator):
    """SD-MAD on each converted series: SDK Image -> MetaTensor -> ``infer_volume`` (fastMRI+ slices 0, 5, 10 by
    default) -> per-slice and study-level findings. The checkpoint is loaded once, when a series is to be processed.

    Named input: ``volumes``. Named output: ``outcome`` (``InferenceOutcome``).
    """

    def __init__(self, fragment: Fragment, *args: Any, model_path: Path, options: DeployAppOptions, **kwargs: Any):
        self._model_path, self._options, self._detector = Path(model_path), options, None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("volumes")
        spec.output("outcome")

    def _load_detector(self):
        if self._detector is None:
            self._detector = load_app_detector(self._model_path, self._options.torch_device())
        return self._detector

    def compute(self, op_input, op_output, context):
        options = self._options
        outcome = infer_series_volumes(
            self._load_detector,
            op_input.receive("volumes"),
            axis=options.axis,
            slices=options.slices,
            batch_size=options.batch_size,
            device=options.torch_device(),
            anomaly_maps=options.anomaly_map,
        )
        op_output.emit(outcome, "outcome")


class _OutcomeWriterOperator(Operator):
    """Writes files for each processed series of the inference ``outcome`` with :attr:`write_outputs`.

    Named input: ``outcome``.
    """

    #: ``write_outputs(outcome, output_folder, **write_options)`` from :mod:`sdmad_monai.deploy.pipeline`
    write_outputs: Any = None

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        output_folder: Path,
        write_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        self._output_folder, self._write_options = Path(output_folder), dict(write_options or {})
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("outcome")

    def compute(self, op_input, op_output, context):
        type(self).write_outputs(op_input.receive("outcome"), self._output_folder, **self._write_options)


class SDMADSRWriterOperator(_OutcomeWriterOperator):
    """Writes ``sdmad_sr_<SeriesInstanceUID>.dcm`` (highdicom Comprehensive SR referencing the source series) and
    its ``.json`` copy per processed series; fails the run after writing when a selected series failed."""

    write_outputs = staticmethod(write_inference_outcome)


class SDMADAnomalyMapWriterOperator(_OutcomeWriterOperator):
    """Writes ``sdmad_map_<SeriesInstanceUID>.dcm`` (highdicom Parametric Map of the 3D anomaly map on the source
    series' geometry, referencing it) per processed series. Added only with ``--anomaly-map``."""

    write_outputs = staticmethod(write_outcome_anomaly_maps)


class SDMADApp(Application):
    """DICOM loader -> SD-MAD series selector -> series to volume -> SD-MAD inference -> SR writer (+ JSON)
    [+ anomaly-map writer with ``--anomaly-map``]."""

    def compose(self):
        options, sdk_argv = DeployAppOptions.parse(self.argv)
        app_context = Application.init_app_context(sdk_argv)
        input_path, output_path = Path(app_context.input_path), Path(app_context.output_path)
        model_path = resolve_checkpoint(app_context.model_path)  # a missing checkpoint fails before any DICOM is read
        rules = options.series_rules()  # so does a bad rules file
        self._finding_codes = options.finding_code_map()  # and a bad finding-codes file
        logger.info(
            "SD-MAD app: input %s, output %s, model %s, rules %s, finding codes %s, options %s",
            input_path,
            output_path,
            model_path,
            rules.source,
            self._finding_codes.source,
            options,
        )

        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=input_path, must_load=False, name="study_loader_op"
        )
        selector = SDMADSeriesSelectorOperator(
            self, rules=rules, strict=not options.allow_no_match, source=str(input_path), name="series_selector_op"
        )
        to_volume = SDMADSeriesToVolumeOperator(self, name="series_to_volume_op")
        inference = SDMADInferenceOperator(self, model_path=model_path, options=options, name="sdmad_inference_op")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, inference, {("volumes", "volumes")})
        for operator in self.output_operators(output_path, options):
            self.add_flow(inference, operator, {("outcome", "outcome")})

    def output_operators(self, output_path: Path, options: DeployAppOptions) -> list[Operator]:
        """The operators fed the inference ``outcome`` (``InferenceOutcome``: per series the result, the sorted
        instances, the ``MetaTensor`` volume and, with ``--anomaly-map``, the 3D anomaly map). Optional outputs are
        added here behind options that are off by default; they come before the SR writer, which fails the run
        (after writing) when a selected series failed."""
        operators: list[Operator] = []
        if options.anomaly_map:
            operators.append(SDMADAnomalyMapWriterOperator(self, output_folder=output_path, name="map_writer_op"))
        operators.append(
            SDMADSRWriterOperator(
                self,
                output_folder=output_path,
                name="sr_writer_op",
                write_options={"finding_codes": self._finding_codes},
            )
        )
        return operators


if __name__ == "__main__":
    SDMADApp().run()
