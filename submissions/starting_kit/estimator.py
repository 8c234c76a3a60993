"""Starting kit: find the lesion by its intensity.

Idea
----
On T1-weighted images a chronic stroke lesion is dark, close to cerebrospinal
fluid (CSF). So: normalize each image's intensities, call "lesion" every voxel
darker than a threshold, but only inside tissue that is normally bright (not in
the ventricles or sulci, which are dark in everybody), and drop specks smaller
than a minimum size. Three things are *learned* from the training subjects:

1. ``tissue_region_``: where the average training image is bright (brain tissue,
   not CSF); since all images are registered to MNI space, this is one mask;
2. ``threshold_``: the normalized intensity below which a voxel is lesion,
   chosen to maximize the mean Dice on (a few) training subjects;
3. ``min_lesion_voxels_``: the size under which a dark blob is noise.

Weaknesses (honestly)
---------------------
Anything dark inside tissue is "lesion": enlarged ventricles and widened sulci
(atrophy), white-matter hyperintensities' T1 counterpart, perivascular spaces,
a bias field. It also misses the grey partial-volume rim of lesions. Expect a
low Dice; its job is to be read and beaten.

Scores on the default synthetic sample and cost: see the table in the README.

Try next
--------
* Compare each voxel with its mirror voxel (MNI is symmetric; most strokes are
  one-sided): ``np.flip(volume, axis=0)``.
* Learn the threshold per cohort (``X.cohorts``): scanners differ in contrast.
* Smooth the image first (``scipy.ndimage.gaussian_filter``) to reduce noise.
"""

import numpy as np
from scipy import ndimage

# Candidate values tried during fit (normalized intensity units, see _normalize).
THRESHOLDS = np.linspace(-3.0, -0.5, 11)
MIN_LESION_VOXELS = [1, 5, 20, 50]
# Fitting on every subject gives the same threshold, only slower.
MAX_FIT_SUBJECTS = 10


def _normalize(volume, brain):
    """Robust z-score: 0 at the median brain intensity, 1 per interquartile range.

    Scanners (and cohorts) scale intensities differently; this puts every image on
    one scale.
    """
    values = volume[brain]
    # Python floats keep the result float32 (numpy scalars would promote it).
    median = float(np.median(values))
    q25, q75 = (float(q) for q in np.percentile(values, [25, 75]))
    return (volume - median) / max(q75 - q25, 1e-6)


def _brain(volume):
    """Voxels inside the head: above a tenth of the bright-tissue intensity."""
    return volume > 0.1 * np.percentile(volume, 99)


def _remove_small_components(mask, min_voxels):
    if min_voxels <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask)  # face connectivity, as the scores use
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def _dice(true, pred):
    total = true.sum() + pred.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(true, pred).sum() / total


class IntensityThreshold:
    """Dark voxels inside normally bright tissue are lesion."""

    def fit(self, X, y):
        # A few subjects, evenly spread, are plenty to pick three numbers.
        chosen = np.linspace(0, len(X) - 1, min(len(X), MAX_FIT_SUBJECTS))
        chosen = np.unique(chosen.round().astype(int))

        # 1. Tissue region: bright in the average normalized image.
        images, masks = [], []
        mean_image = np.zeros(X.shape, dtype=np.float32)
        for i in chosen:
            volume = X[i]
            image = _normalize(volume, _brain(volume))
            images.append(image)
            masks.append(y[i])
            mean_image += image / len(chosen)
        self.tissue_region_ = mean_image > -1.0

        # 2. Threshold: best mean Dice over the candidates (no size filter yet).
        dice_per_threshold = [
            np.mean(
                [
                    _dice(mask, (image < t) & self.tissue_region_)
                    for image, mask in zip(images, masks, strict=True)
                ]
            )
            for t in THRESHOLDS
        ]
        self.threshold_ = float(THRESHOLDS[int(np.argmax(dice_per_threshold))])

        # 3. Minimum lesion size, given that threshold.
        raw = [(image < self.threshold_) & self.tissue_region_ for image in images]
        dice_per_size = [
            np.mean(
                [
                    _dice(mask, _remove_small_components(r, size))
                    for r, mask in zip(raw, masks, strict=True)
                ]
            )
            for size in MIN_LESION_VOXELS
        ]
        self.min_lesion_voxels_ = MIN_LESION_VOXELS[int(np.argmax(dice_per_size))]
        self.train_dice_ = float(max(dice_per_size))
        return self

    def predict(self, X):
        predictions = np.zeros((len(X), *X.shape), dtype=bool)
        for i in range(len(X)):
            volume = X[i]
            image = _normalize(volume, _brain(volume))
            dark = (image < self.threshold_) & self.tissue_region_
            predictions[i] = _remove_small_components(dark, self.min_lesion_voxels_)
        return predictions


def get_estimator():
    return IntensityThreshold()
