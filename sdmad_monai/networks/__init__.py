"""CLIP backbone loading, shift adapters (Eq. 1-2) and the SD-MAD detector."""

from .adapter import DEFAULT_ADAPTER_LAMBDA, ShiftAdapter, attach_adapter, shift_interpolate
from .backbone import TINY_MODEL_NAME, WeightsUnavailableError, image_blocks, load_clip, text_blocks
from .detector import PAPER_IMAGE_ADAPTER_LAYERS, PRESETS, DetectorStateError, SignDrivenDetector, TextState
from .outputs import AnomalyMaps, DetectorOutput

__all__ = [
    "DEFAULT_ADAPTER_LAMBDA",
    "ShiftAdapter",
    "attach_adapter",
    "shift_interpolate",
    "TINY_MODEL_NAME",
    "WeightsUnavailableError",
    "image_blocks",
    "load_clip",
    "text_blocks",
    "PAPER_IMAGE_ADAPTER_LAYERS",
    "PRESETS",
    "DetectorStateError",
    "SignDrivenDetector",
    "TextState",
    "AnomalyMaps",
    "DetectorOutput",
]
