"""The SD-MAD paper's math as pure tensor functions (Eq. 3, 4, 6, 7, 8), and MVFA's patch-level map formulas.

Conventions shared by every function here:

- Features are L2-normalised inside each function, so callers may pass raw encoder outputs.
- ``d(a, b) = 1 - cosine(a, b)`` is the cosine distance of the paper.
- ``prompt_categories`` is a LongTensor ``[P]`` giving, for each text prompt, its category index ``0..K-1``, or
  ``-1`` for a normal-image prompt.
- ``labels`` is a multi-hot float tensor ``[B, K]``; an all-zero row is a normal image.
- Losses sum over prompts as the paper writes them, then take the mean over the batch.

No state, no I/O: the modules in :mod:`sdmad_monai.networks` and :mod:`sdmad_monai.losses` call these.

Where each lives (one file per part of the paper):

- :mod:`.common`: ``NORMAL_CATEGORY``, the cosine distance, argument checks and prompt masks;
- :mod:`.loss`: Eq. 3 and Eq. 4 (Eq. 5 is :class:`sdmad_monai.losses.SDMADLoss`), and the optional category
  ranking term, which is not the paper's;
- :mod:`.sign_selection`: Eq. 6 and the kept-prompt membership;
- :mod:`.scoring`: Eq. 7, Eq. 8, the anchor feature and the image anomaly score;
- :mod:`.maps`: MVFA's patch-level anomaly maps (pixel-level protocol).
"""

from __future__ import annotations

from .common import NORMAL_CATEGORY, cosine_distance_matrix
from .loss import AnchorLossTerms, anchor_loss, anchor_loss_terms, category_ranking_loss, image_text_loss
from .maps import (
    combine_anomaly_maps,
    few_shot_anomaly_map,
    nearest_normal_patch_distance,
    patch_grid_to_image,
    smooth_anomaly_map,
    zero_shot_anomaly_map,
    zero_shot_patch_logits,
)
from .scoring import (
    anchor_feature_from_normal_prompts,
    anchor_predictions,
    anchor_predictions_from_similarities,
    category_scores,
    category_scores_from_similarities,
    image_anomaly_score,
)
from .sign_selection import kept_prompt_membership, select_signs, selection_with_fallback

__all__ = [
    "NORMAL_CATEGORY",
    "cosine_distance_matrix",
    "image_text_loss",
    "anchor_loss_terms",
    "anchor_loss",
    "category_ranking_loss",
    "AnchorLossTerms",
    "select_signs",
    "selection_with_fallback",
    "kept_prompt_membership",
    "category_scores",
    "category_scores_from_similarities",
    "anchor_predictions",
    "anchor_predictions_from_similarities",
    "anchor_feature_from_normal_prompts",
    "image_anomaly_score",
    "zero_shot_patch_logits",
    "nearest_normal_patch_distance",
    "patch_grid_to_image",
    "zero_shot_anomaly_map",
    "few_shot_anomaly_map",
    "combine_anomaly_maps",
    "smooth_anomaly_map",
]
