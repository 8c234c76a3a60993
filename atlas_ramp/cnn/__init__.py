"""Kit plumbing of the small CNN (``submissions/small_cnn``): the only part of
``atlas_ramp`` that imports torch.

* :mod:`atlas_ramp.cnn.preparation`: per-subject preparation (pooling, head
  mask, bias field, z-scores, histogram landmarks, the template channel) and
  windows cut from volumes;
* :mod:`atlas_ramp.cnn.patches`: what training keeps of each subject, patches
  cut on demand, lesion-by-lesion centres, and the ``torch.utils.data``
  pipeline;
* :mod:`atlas_ramp.cnn.prediction`: sliding windows, flip averaging, back to
  the data's grid, the decision threshold, weakening unsure lesions;
* :mod:`atlas_ramp.cnn.segmenter`: the base class that ties these together
  (read the training set, calibrate, predict, pickle).

The model itself (network, augmentation, loss, training loop, budgets) lives
in the submission's ``estimator.py``, the one file a RAMP server receives.
"""

from .patches import (
    PatchDataset,
    TrainingSubjects,
    fade_lesions,
    is_memory_mapped,
    lesion_indices,
    patch_loader,
    pooled_lesions,
    seed_worker,
)
from .prediction import (
    THRESHOLDS,
    best_threshold,
    channels_last,
    final_probability,
    head_box,
    pick_device,
    predict_probability,
    probability_on_data_grid,
    weaken_unsure_lesions,
)
from .preparation import (
    BIAS_CELL,
    LANDMARK_LEVELS,
    bias_on,
    bias_on_grid,
    bias_patch,
    corrected_mirror,
    corrected_pooled,
    cut_window,
    downsample,
    head_landmarks,
    head_mask,
    mirrored_coordinates,
    pad_to_at_least,
    pooled_statistics,
    prepare,
    shift_without_wrap,
    standardize_histogram,
    template_on_grid,
    white_matter_bias,
    working_factor,
    z_scored_channels,
)
from .segmenter import PatchSegmenter

__all__ = [
    "BIAS_CELL",
    "LANDMARK_LEVELS",
    "PatchDataset",
    "PatchSegmenter",
    "THRESHOLDS",
    "TrainingSubjects",
    "best_threshold",
    "bias_on",
    "bias_on_grid",
    "bias_patch",
    "channels_last",
    "corrected_mirror",
    "corrected_pooled",
    "cut_window",
    "downsample",
    "fade_lesions",
    "final_probability",
    "head_box",
    "head_landmarks",
    "head_mask",
    "is_memory_mapped",
    "lesion_indices",
    "mirrored_coordinates",
    "pad_to_at_least",
    "patch_loader",
    "pick_device",
    "pooled_lesions",
    "pooled_statistics",
    "predict_probability",
    "prepare",
    "probability_on_data_grid",
    "seed_worker",
    "shift_without_wrap",
    "standardize_histogram",
    "template_on_grid",
    "weaken_unsure_lesions",
    "white_matter_bias",
    "working_factor",
    "z_scored_channels",
]
