"""configs/metadata.json against the MONAI bundle specification's metadata fields (a JSON schema written here from
the specification text, https://docs.monai.io/en/latest/mb_specification.html: the official schema file cannot be
downloaded in this workplace) and against the default configs it describes."""

import json
from pathlib import Path

import jsonschema
import monai
import torch
from monai.bundle import ConfigParser

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROOT = CONFIGS.parent

_TENSOR = {
    "type": "object",
    "required": [
        "type",
        "format",
        "num_channels",
        "spatial_shape",
        "dtype",
        "value_range",
        "is_patch_data",
        "channel_def",
    ],
    "properties": {
        "type": {"enum": ["image", "probabilities", "series", "tuples", "sequence", "object"]},
        "format": {"type": "string", "minLength": 1},
        "modality": {"type": "string"},
        "num_channels": {"type": "integer", "minimum": 1},
        "spatial_shape": {"type": "array", "items": {"type": ["integer", "string"]}},
        "dtype": {"enum": ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]},
        "value_range": {"type": "array", "items": {"type": "number"}, "maxItems": 2},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
SCHEMA = {
    "type": "object",
    "required": [
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "task",
        "description",
        "authors",
        "copyright",
        "data_source",
        "intended_use",
        "network_data_format",
    ],
    "properties": {
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "changelog": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}},
        "monai_version": {"type": "string"},
        "pytorch_version": {"type": "string"},
        "numpy_version": {"type": "string"},
        "required_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
        "optional_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
        "name": {"type": "string"},
        "task": {"type": "string"},
        "description": {"type": "string"},
        "authors": {"type": "string"},
        "copyright": {"type": "string"},
        "eval_metrics": {"type": "object", "additionalProperties": {"type": "number"}},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "minProperties": 1, "additionalProperties": _TENSOR},
                "outputs": {"type": "object", "minProperties": 1, "additionalProperties": _TENSOR},
            },
        },
    },
}


def test_metadata_follows_the_bundle_specification():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    jsonschema.validate(metadata, SCHEMA)
    assert metadata["version"] in metadata["changelog"]
    assert metadata["monai_version"] == monai.__version__
    assert torch.__version__.split("+")[0] == metadata["pytorch_version"]
    assert "sdmad_monai" not in metadata.get("required_packages_version", {})  # on no package index
    for name in ("LICENSE", "docs/README.md", "docs/data_license.txt", "large_files.yml"):
        assert (ROOT / name).is_file(), name


def test_metadata_describes_the_default_config():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    config = ConfigParser.load_config_file(str(CONFIGS / "train.json"))
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [config["image_size"]] * 2 and image["num_channels"] == 3
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(config["categories"])
    assert [pred["channel_def"][str(i)] for i in range(pred["num_channels"])] == config["categories"]
    assert pred["value_range"] == [-1, 1] and pred["type"] != "probabilities"  # cosine scores, not probabilities
