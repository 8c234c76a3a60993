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
   chosen to maximize the mean Dice on (a few) training subjects that have a
   lesion;
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

from atlas_ramp.rules import head_mask, small_components

# Candidate values tried during fit (normalized intensity units, see _normalize).
THRESHOLDS = np.linspace(-3.0, -0.5, 11)
MIN_LESION_VOXELS = [1, 5, 20, 50]
# Fitting on every subject gives the same threshold, only slower.
MAX_FIT_SUBJECTS = 10


def _statistics_step(volume):
    """Stride for intensity statistics: every 2nd voxel per axis on fine grids."""
    return 2 if volume.size > 2_000_000 else 1


def _normalize(volume, brain):
    """Robust z-score: 0 at the median brain intensity, 1 per interquartile range.

    Scanners (and cohorts) scale intensities differently; this puts every image on
    one scale. On fine grids (1 mm) the statistics come from every 8th voxel
    (a 2 x 2 x 2 grid): the same numbers, eight times cheaper.
    """
    step = _statistics_step(volume)
    values = volume[::step, ::step, ::step][brain[::step, ::step, ::step]]
    # Python floats keep the result float32 (numpy scalars would promote it).
    median = float(np.median(values))
    q25, q75 = (float(q) for q in np.percentile(values, [25, 75]))
    return (volume - median) / max(q75 - q25, 1e-6)


def _brain(volume):
    """Voxels inside the head (the kit's shared rule, on a stride for speed)."""
    return head_mask(volume, step=_statistics_step(volume))


def _remove_small_components(mask, min_voxels):
    """Drop predicted lesions smaller than ``min_voxels`` (face connectivity)."""
    return mask & ~small_components(mask, min_voxels)


def _dice(n_overlap, n_true, n_pred):
    """Dice from voxel counts (1 when both masks are empty)."""
    total = n_true + n_pred
    return 1.0 if total == 0 else 2.0 * n_overlap / total


class IntensityThreshold:
    """Dark voxels inside normally bright tissue are lesion."""

    def fit(self, X, y):
        # A few subjects, evenly spread, are plenty to pick three numbers.
        chosen = np.linspace(0, len(X) - 1, min(len(X), MAX_FIT_SUBJECTS))
        chosen = np.unique(chosen.round().astype(int))

        # 1. Tissue region: bright in the average normalized image.
        images, masks = [], []
        mean_image = np.zeros(X.volume_shape, dtype=np.float32)
        for i in chosen:
            volume = X[i]
            image = _normalize(volume, _brain(volume))
            images.append(image)
            masks.append(y[i])
            mean_image += image / len(chosen)
        self.tissue_region_ = mean_image > -1.0

        # Steps 2 and 3 score thresholds on subjects that have a lesion. A subject
        # without one scores Dice 1 only when nothing at all is predicted, which
        # would outweigh the small Dice of every real lesion and teach "predict
        # nothing". (If no chosen subject has a lesion, all of them are used.)
        with_lesion = [k for k, mask in enumerate(masks) if mask.any()]
        if with_lesion:
            images = [images[k] for k in with_lesion]
            masks = [masks[k] for k in with_lesion]

        # Only voxels of the tissue region can be called lesion: keep their
        # intensities and labels as 1D arrays (cheaper than whole volumes).
        region = self.tissue_region_
        inside = [
            (image[region], mask[region], int(mask.sum()))
            for image, mask in zip(images, masks, strict=True)
        ]

        # 2. Threshold: best mean Dice over the candidates (no size filter yet).
        dice_per_threshold = [
            np.mean(
                [
                    _dice(
                        np.sum(mask_in & (image_in < t)), n_true, np.sum(image_in < t)
                    )
                    for image_in, mask_in, n_true in inside
                ]
            )
            for t in THRESHOLDS
        ]
        self.threshold_ = float(THRESHOLDS[int(np.argmax(dice_per_threshold))])

        # 3. Minimum lesion size, given that threshold. Label the dark blobs once
        # per subject; count, per blob, its size and how many lesion voxels it
        # covers; then every candidate size is just a sum over the kept blobs.
        blob_counts = []
        for image, mask in zip(images, masks, strict=True):
            labels, n_blobs = ndimage.label((image < self.threshold_) & region)
            sizes = np.bincount(labels.ravel(), minlength=n_blobs + 1)
            hits = np.bincount(labels[mask], minlength=n_blobs + 1)
            blob_counts.append((sizes, hits, int(mask.sum())))
        dice_per_size = []
        for size in MIN_LESION_VOXELS:
            dices = []
            for sizes, hits, n_true in blob_counts:
                kept = sizes >= size
                kept[0] = False  # label 0 is the background
                dices.append(_dice(hits[kept].sum(), n_true, sizes[kept].sum()))
            dice_per_size.append(np.mean(dices))
        self.min_lesion_voxels_ = MIN_LESION_VOXELS[int(np.argmax(dice_per_size))]
        self.train_dice_ = float(max(dice_per_size))
        return self

    def predict(self, X):
        predictions = np.zeros(X.shape, dtype=bool)  # (len(X), *X.volume_shape)
        for i in range(len(X)):
            volume = X[i]
            image = _normalize(volume, _brain(volume))
            dark = (image < self.threshold_) & self.tissue_region_
            predictions[i] = _remove_small_components(dark, self.min_lesion_voxels_)
        return predictions


def get_estimator():
    return IntensityThreshold()
