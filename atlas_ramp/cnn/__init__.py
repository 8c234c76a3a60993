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
What it (and the tests and benchmarks) use is re-exported here; the rest is
in the modules above.
"""

from .patches import (
    PatchDataset,
    TrainingSubjects,
    blank_random_box,
    fade_lesions,
    patch_loader,
    pooled_lesions,
)
from .prediction import (
    THRESHOLDS,
    channels_last,
    head_box,
    pick_device,
    predict_probability,
    weaken_unsure_lesions,
)
from .preparation import (
    LANDMARK_LEVELS,
    bias_on,
    bias_on_grid,
    bias_patch,
    cut_window,
    downsample,
    head_landmarks,
    head_mask,
    pad_to_at_least,
    prepare,
    shift_without_wrap,
    standardize_histogram,
    template_on_grid,
    white_matter_bias,
)
from .segmenter import PatchSegmenter

__all__ = [
    "LANDMARK_LEVELS",
    "PatchDataset",
    "PatchSegmenter",
    "THRESHOLDS",
    "TrainingSubjects",
    "bias_on",
    "bias_on_grid",
    "bias_patch",
    "blank_random_box",
    "channels_last",
    "cut_window",
    "downsample",
    "fade_lesions",
    "head_box",
    "head_landmarks",
    "head_mask",
    "pad_to_at_least",
    "patch_loader",
    "pick_device",
    "pooled_lesions",
    "predict_probability",
    "prepare",
    "shift_without_wrap",
    "standardize_histogram",
    "template_on_grid",
    "weaken_unsure_lesions",
    "white_matter_bias",
]
