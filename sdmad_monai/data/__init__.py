"""Datalists for SD-MAD: fastMRI+ slices, BMAD and MedIAnomaly folders, k-shot support sets and the deterministic demo
dataset."""

from sdmad_monai.data.bmad import BMAD_SECTIONS, build_bmad_datalist
from sdmad_monai.data.bmad_demo import generate_bmad_like_dataset, generate_medianomaly_like_dataset
from sdmad_monai.data.bmad_protocol import BMAD_PIXEL_LEVEL, prepare_bmad_protocol
from sdmad_monai.data.demo import (
    DEMO_SHAPE,
    DEMO_SPACING,
    DEMO_SUFFIX,
    generate_demo_dataset,
)
from sdmad_monai.data.fastmri import (
    FASTMRI_BRAIN_CATEGORIES,
    FASTMRI_CSV_COLUMNS,
    FASTMRI_NORMAL_LABELS,
    FastMRIAnnotation,
    FastMRIDatalist,
    build_fastmri_datalist,
    read_fastmri_annotations,
    read_fastmri_file_list,
)
from sdmad_monai.data.kshot import KShotSplit, load_k_shot, save_k_shot, select_k_shot
from sdmad_monai.data.medianomaly import MEDIANOMALY_LAYOUTS, build_medianomaly_datalist, detect_medianomaly_layout

__all__ = [
    "BMAD_PIXEL_LEVEL",
    "BMAD_SECTIONS",
    "DEMO_SHAPE",
    "DEMO_SPACING",
    "DEMO_SUFFIX",
    "FASTMRI_BRAIN_CATEGORIES",
    "FASTMRI_CSV_COLUMNS",
    "FASTMRI_NORMAL_LABELS",
    "FastMRIAnnotation",
    "FastMRIDatalist",
    "KShotSplit",
    "MEDIANOMALY_LAYOUTS",
    "build_bmad_datalist",
    "build_fastmri_datalist",
    "build_medianomaly_datalist",
    "detect_medianomaly_layout",
    "generate_bmad_like_dataset",
    "generate_demo_dataset",
    "generate_medianomaly_like_dataset",
    "load_k_shot",
    "prepare_bmad_protocol",
    "read_fastmri_annotations",
    "read_fastmri_file_list",
    "save_k_shot",
    "select_k_shot",
]
