"""The 3D anomaly map as a DICOM Parametric Map (sdmad_monai.deploy.map_dicom) and its wiring in app_logic.

The written files are read back with pydicom: geometry per frame against the source instances, pixel values against
the anomaly volume, references to the source series, deterministic UIDs.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch

from sdmad_monai.deploy.app_logic import (
    DeployAppOptions,
    InferenceOutcome,
    SeriesFindings,
    SeriesVolume,
    infer_series,
    infer_series_volumes,
    write_outcome_anomaly_maps,
)
from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.deploy.map_dicom import (
    MAP_SERIES_DESCRIPTION,
    anomaly_map_identifiers,
    build_anomaly_map,
    write_anomaly_map,
)
from sdmad_monai.deploy.sr import AlgorithmInfo, sr_identifiers
from sdmad_monai.networks import SignDrivenDetector

pytestmark = pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.60", "1.2.826.0.1.3680043.8.498.61"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
ALGORITHM = AlgorithmInfo(version="0.1.0", fingerprint="ab" * 32)
PROCESSED = [0, 2, 5]  # canonical axial indices = instance positions along the normal (axial series, feet first)
COLUMNS, ROWS, SLICES = 7, 5, 6


@pytest.fixture
def series(tmp_path):
    """An axial MR series with non-square pixels (2 mm between rows, 3 mm between columns), read in reverse file
    order and sorted along the slice normal, as the SDK image's slices are."""
    rng = np.random.default_rng(0)
    paths = write_dicom_series(
        rng.uniform(0, 1000, (COLUMNS, ROWS, SLICES)),
        tmp_path / "ax",
        "axial",
        STUDY,
        SERIES,
        pixel_spacing=(2.0, 3.0),
        slice_thickness=4.0,
        series_description="AX T1",
    )
    datasets = [pydicom.dcmread(p) for p in reversed(paths)]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def planted_volume(seed: int = 1) -> np.ndarray:
    """``[X, Y, Z]`` float32 map: random values (not representable in fewer bits) on PROCESSED, 0 elsewhere."""
    volume = np.zeros((COLUMNS, ROWS, SLICES), np.float32)
    values = np.random.default_rng(seed).uniform(-0.5, 1.5, (COLUMNS, ROWS, len(PROCESSED))).astype(np.float32)
    volume[:, :, PROCESSED] = values
    return volume


def frames_by_source(ds):
    """``{source SOPInstanceUID: (frame [rows, cols], per-frame functional group)}`` of a written map."""
    pixels = ds.pixel_array
    result = {}
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence, strict=True):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        result[uid] = (frame, item)
    return result


def test_map_geometry_values_and_references(series, tmp_path):
    volume = planted_volume()
    path = write_anomaly_map(
        volume, series, ALGORITHM, PROCESSED, tmp_path / "out", processed_images=[series[k] for k in PROCESSED]
    )
    assert path == tmp_path / "out" / f"sdmad_map_{SERIES}.dcm"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind
    ds = pydicom.dcmread(path)
    assert (ds.SOPClassUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (
        PARAMETRIC_MAP,
        STUDY,
        series[0].FrameOfReferenceUID,
    )
    assert (ds.PatientID, ds.SeriesDescription, ds.Rows, ds.Columns, int(ds.NumberOfFrames)) == (
        series[0].PatientID,
        MAP_SERIES_DESCRIPTION,
        ROWS,
        COLUMNS,
        SLICES,
    )
    assert ds.ContentDescription == "SD-MAD anomaly map; axial slices 0,2,5"
    assert (
        "axial slices (canonical index along the axis, 0 at the lowest world coordinate): 0,2,5; source "
        "InstanceNumbers 1,3,6." in ds.ImageComments
    )
    assert ds.pixel_array.dtype == np.float32

    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = frames_by_source(ds)
    assert set(frames) == {str(s.SOPInstanceUID) for s in series}  # one frame per source instance
    for k, source in enumerate(series):
        frame, item = frames[str(source.SOPInstanceUID)]
        orientation = item.get("PlaneOrientationSequence", shared.get("PlaneOrientationSequence"))
        measures = item.get("PixelMeasuresSequence", shared.get("PixelMeasuresSequence"))
        np.testing.assert_array_equal(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source.ImagePositionPatient],
        )
        np.testing.assert_array_equal(
            [float(v) for v in orientation[0].ImageOrientationPatient],
            [float(v) for v in source.ImageOrientationPatient],
        )
        np.testing.assert_array_equal([float(v) for v in measures[0].PixelSpacing], [2.0, 3.0])
        # frame [rows, columns] = the volume's slice k transposed, exactly (float32 stored as float32)
        np.testing.assert_array_equal(frame, volume[:, :, k].T)
        label = item.FrameContentSequence[0].FrameLabel
        if k in PROCESSED:
            assert label == f"processed: axial slice {k}" and np.any(frame != 0)
        else:
            assert label == "not processed" and not np.any(frame)

    # the source series is referenced (instance level) and each frame says where it came from
    referenced = ds.ReferencedSeriesSequence[0]
    assert str(referenced.SeriesInstanceUID) == SERIES
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == set(frames)
    # stored value = anomaly score: identity mapping, unit "no units", the map's value range
    mapping = shared.RealWorldValueMappingSequence[0]
    assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
    assert (
        mapping.MeasurementUnitsCodeSequence[0].CodeValue,
        mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator,
    ) == ("1", "UCUM")
    assert mapping.DoubleFloatRealWorldValueFirstValueMapped == pytest.approx(float(volume.min()))
    assert mapping.DoubleFloatRealWorldValueLastValueMapped == pytest.approx(float(volume.max()))


def test_map_uids_are_deterministic(series, tmp_path):
    volume, processed = planted_volume(), [series[k] for k in PROCESSED]
    first, second = (
        pydicom.dcmread(
            write_anomaly_map(volume, series, ALGORITHM, PROCESSED, tmp_path / d, processed_images=processed)
        )
        for d in "ab"
    )
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (second.SeriesInstanceUID, second.SOPInstanceUID)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == anomaly_map_identifiers(STUDY, SERIES, ALGORITHM)
    assert first.SeriesInstanceUID.startswith("2.25.")
    sr = sr_identifiers(STUDY, SERIES, ALGORITHM, [], [ds.SOPInstanceUID for ds in series])
    assert {first.SeriesInstanceUID, first.SOPInstanceUID}.isdisjoint({sr.series_instance_uid, sr.sop_instance_uid})
    other = AlgorithmInfo(version="0.1.0", fingerprint="cd" * 32)  # another checkpoint: other UIDs
    assert set(anomaly_map_identifiers(STUDY, SERIES, other)).isdisjoint(
        {first.SeriesInstanceUID, first.SOPInstanceUID}
    )


def test_map_across_acquired_planes(series):
    """Coronal slices of an axial series cut across the frames: no per-frame label, the comment says so."""
    volume = np.zeros((COLUMNS, ROWS, SLICES), np.float32)
    volume[:, 1, :] = 0.75  # coronal slice: one row of every frame
    pmap = build_anomaly_map(volume, series, ALGORITHM, [3], axis="coronal", processed_images=None)
    assert (
        "coronal slices (canonical index along the axis, 0 at the lowest world coordinate): 3. They cut across"
        in pmap.ImageComments
    )
    assert all("FrameLabel" not in item.FrameContentSequence[0] for item in pmap.PerFrameFunctionalGroupsSequence)
    np.testing.assert_array_equal(pmap.pixel_array[:, 1, :], 0.75)
    assert not np.any(np.delete(pmap.pixel_array, 1, axis=1))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda v, s: (v[:, :, :-1], s), r"anomaly volume has shape \(7, 5, 5\), expected \(7, 5, 6\)"),
        (lambda v, s: (np.where(v > 1.0, np.nan, v), s), "NaN or infinite"),
        (lambda v, s: (v, s[::-1]), "must be sorted by position along the slice normal"),
        (lambda v, s: (v, []), "No source instance given"),
    ],
)
def test_map_bad_input(series, change, match):
    volume, datasets = change(planted_volume(), series)
    with pytest.raises(ValueError, match=match):
        build_anomaly_map(volume, datasets, ALGORITHM, PROCESSED)


def test_map_processed_image_of_another_series(series):
    stranger = pydicom.Dataset()
    stranger.SOPInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match=r"processed images \['1.2.3.4'\] are not instances of the source series"):
        build_anomaly_map(planted_volume(), series, ALGORITHM, [0], processed_images=[stranger])


# ------------------------------------------------------------------------------------------------ app wiring
def test_option_parsing():
    assert DeployAppOptions().anomaly_map is False
    options, rest = DeployAppOptions.parse(["app", "-i", "in", "--anomaly-map", "-o", "out"], environ={})
    assert options.anomaly_map is True and rest == ["app", "-i", "in", "-o", "out"]
    assert DeployAppOptions.parse(["app"], environ={"SDMAD_ANOMALY_MAP": "1"})[0].anomaly_map is True
    assert DeployAppOptions.parse(["app"], environ={"SDMAD_ANOMALY_MAP": "off"})[0].anomaly_map is False
    with pytest.raises(ValueError, match="environment variable SDMAD_ANOMALY_MAP must be 1/true/yes or 0/false/no"):
        DeployAppOptions.parse(["app"], environ={"SDMAD_ANOMALY_MAP": "maybe"})


@pytest.fixture(scope="module")
def tiny_series(tmp_path_factory):
    """A 12-slice axial series (as the SDK converts it) and the tiny detector."""
    folder = tmp_path_factory.mktemp("tiny") / "ax"
    rng = np.random.default_rng(3)
    write_dicom_series(rng.uniform(0, 500, (20, 16, 12)), folder, "axial", STUDY, SERIES, pixel_spacing=(2.0, 1.5))
    datasets = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    array = np.stack([ds.pixel_array.astype(np.float32) for ds in datasets])  # [D, H, W]
    first, last = (np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in (datasets[0], datasets[-1]))
    lps = np.eye(4)
    lps[:3, 2], lps[:3, 3] = (last - first) / (len(datasets) - 1), first
    metadata = {
        "row_direction_cosine": [1.0, 0.0, 0.0],
        "col_direction_cosine": [0.0, 1.0, 0.0],
        "row_pixel_spacing": 2.0,
        "col_pixel_spacing": 1.5,
        "dicom_affine_transform": lps,
    }
    volume = SeriesVolume(name=SERIES, datasets=datasets, array=array, metadata=metadata)
    torch.manual_seed(0)
    return volume, SignDrivenDetector.from_preset("tiny")


def test_inference_outcome_to_map(tiny_series, tmp_path):
    """infer_series with anomaly_maps: the outcome carries the anomaly volume on the series grid; the written map
    holds it on the processed instances and 0 elsewhere."""
    volume, detector = tiny_series
    findings = infer_series(detector, volume, slices=[0, 5, 10], anomaly_maps=True)
    assert findings.anomaly_volume.shape == (20, 16, 12)
    np.testing.assert_array_equal(findings.anomaly_volume, findings.result.anomaly_volume())
    assert infer_series(detector, volume, slices=[0]).anomaly_volume is None  # default off
    [path] = write_outcome_anomaly_maps(InferenceOutcome(findings=[findings]), tmp_path)
    frames = frames_by_source(pydicom.dcmread(path))
    for k, source in enumerate(volume.datasets):
        frame, _ = frames[str(source.SOPInstanceUID)]
        np.testing.assert_array_equal(frame, findings.anomaly_volume[:, :, k].T)
        assert np.any(frame != 0) == (k in (0, 5, 10))

    no_volume = SeriesFindings(
        name="x", result=findings.result, datasets=volume.datasets, source_images=None, algorithm=findings.algorithm
    )
    with pytest.raises(
        ValueError,
        match=r"No anomaly volume for series x: run the inference with "
        r"anomaly_maps=True",
    ):
        write_outcome_anomaly_maps(InferenceOutcome(findings=[no_volume]), tmp_path)


def test_detector_without_maps_is_one_clear_error(tiny_series):
    volume, _ = tiny_series
    no_maps = SignDrivenDetector.from_preset("tiny", map_layers=[])
    with pytest.raises(ValueError, match=r"Anomaly maps were asked for .* built with map_layers=\[\]"):
        infer_series_volumes(lambda: no_maps, [volume, volume], slices=[0], anomaly_maps=True)
    assert len(infer_series_volumes(lambda: no_maps, [volume], slices=[0]).findings) == 1  # off: as before


def test_map_passes_dciodvfy(series, tmp_path, dciodvfy):
    volume = planted_volume() * 0.1  # a range narrower than 1: the window is valid only as LINEAR_EXACT
    path = write_anomaly_map(
        volume, series, ALGORITHM, PROCESSED, tmp_path / "out", processed_images=[series[k] for k in PROCESSED]
    )
    assert dciodvfy(path) == []
    ds = pydicom.dcmread(path)
    window = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert window.VOILUTFunction == "LINEAR_EXACT" and float(window.WindowWidth) < 1
    assert ds.BodyPartExamined == series[0].BodyPartExamined  # the source's anatomy, so no Laterality is needed
