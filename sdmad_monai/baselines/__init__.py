"""Few-normal-shot baselines of the project's sources, beside SD-MAD: D²4FAD and SIR (feature reconstruction against
a frozen teacher).

- :mod:`.teacher`: the frozen teachers (the open_clip image tower SD-MAD loads, or torchvision wide_resnet50_2 from a
  local file);
- :mod:`.decoder`: the decoder both use (the teacher's scales rebuilt from its deepest feature);
- :mod:`.functional`: the shared arithmetic (1 - cosine maps, their multi-scale fusion, the cosine loss);
- :mod:`.d24fad`: D²4FAD (student + learn-to-weight over k normal supports);
- :mod:`.sir`: SIR (up-then-down decoder in refinement loops; the choices the paper leaves open are documented there);
- :mod:`.training`: their training regimes (leave one dataset out; one-shot universal) and batched scoring.
"""

from .d24fad import D24FAD, D24FADLoss, D24FADOutput, LearnToWeight, support_weights
from .decoder import ReconstructionDecoder
from .functional import cosine_distance_map, reconstruction_anomaly_map, scale_cosine_loss
from .sir import SIR, SIROutput
from .teacher import CLIPTeacher, TeacherFeatures, WideResNetTeacher, default_clip_layers
from .training import score_images, train_d24fad, train_sir

__all__ = [
    "CLIPTeacher",
    "D24FAD",
    "D24FADLoss",
    "D24FADOutput",
    "LearnToWeight",
    "ReconstructionDecoder",
    "SIR",
    "SIROutput",
    "TeacherFeatures",
    "WideResNetTeacher",
    "cosine_distance_map",
    "default_clip_layers",
    "reconstruction_anomaly_map",
    "scale_cosine_loss",
    "score_images",
    "support_weights",
    "train_d24fad",
    "train_sir",
]
