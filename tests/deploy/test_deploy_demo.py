"""The synthetic DICOM series of sdmad_monai.deploy.demo: complete MR and CT Image IODs, checked by dciodvfy.

The demo study (``sdmad write_demo_study``) is what the PACS walk-through and the PACS tests send to Orthanc; a PACS
or a viewer may refuse, or read wrongly, an instance that lacks a Type 1 or Type 2 attribute, so every file must pass
the independent validator with no error.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config

from sdmad_monai.deploy.demo import SYNTHETIC_ACQUISITION, write_dicom_series

#: The affine of a resampled NIfTI volume: steps whose decimal forms are longer than DICOM's 16-character DS limit.
AFFINE = np.array(
    [
        [-0.9375123456789, 0.0, 0.0, 120.123456789],
        [0.0, 0.9375987654321, 0.0, -100.333333333],
        [0.0, 0.0, 3.3000000001, -40.777777777],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_series_is_a_valid_iod(tmp_path, dciodvfy, modality):
    volume = np.random.default_rng(0).uniform(0, 1000, (12, 10, 4))
    paths = write_dicom_series(volume, tmp_path, modality=modality, affine=AFFINE, series_description="AX T1")
    for path in (paths[0], paths[-1]):
        assert dciodvfy(path) == [], path
    # pydicom's strict reading (the mode that refused the earlier 17-character PixelSpacing) accepts every value
    previous = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    try:
        ds = pydicom.dcmread(paths[1])
        values = [*ds.ImagePositionPatient, *ds.ImageOrientationPatient, *ds.PixelSpacing, ds.SliceThickness]
    finally:
        pydicom_config.settings.reading_validation_mode = previous
    assert all(len(str(v)) <= 16 for v in values)
    assert float(ds.PixelSpacing[0]) == pytest.approx(0.9375987654321, abs=1e-9)  # rows: the affine's second step
    assert float(ds.ImagePositionPatient[0]) == pytest.approx(-120.123456789, abs=1e-9)  # RAS -> LPS


def test_synthetic_defaults_give_way_to_given_attributes(tmp_path):
    path = write_dicom_series(np.zeros((4, 4, 1)), tmp_path, attributes={"Manufacturer": "ACME", "EchoTime": "90"})[0]
    ds = pydicom.dcmread(path)
    assert (ds.Manufacturer, float(ds.EchoTime)) == ("ACME", 90.0)
    assert ds.ScanningSequence == SYNTHETIC_ACQUISITION["MR"]["ScanningSequence"]
    assert "Laterality" not in ds and ds.BodyPartExamined == "BRAIN"  # unpaired body part: no Laterality at all
