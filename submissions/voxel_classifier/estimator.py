"""Voxel classifier: gradient-boosted trees on hand-made features of each voxel.

Idea
----
Describe every brain voxel by a few numbers a neuroimager would look at, and let
a classifier learn which combinations mean "lesion":

* its intensity, normalized per image (robust z-score inside the brain);
* the same intensity smoothed at 2, 4 and 8 mm, and its contrast with those
  neighbourhoods (a lesion is a dark *blob*, noise is a dark *voxel*);
* left-right asymmetry: the MNI template is symmetric and most strokes are
  one-sided, so a lesion differs from its mirror voxel, while atrophy or
  enlarged ventricles usually do not;
* the difference from the MNI152 template, and the template's grey matter,
  white matter and CSF maps (dark is normal in CSF, abnormal in white matter);
* the position in MNI space.

Lesions are dark on T1, so only *candidate* voxels, darker than typical brain
tissue, are classified; the rest (most of the white matter) is never lesion.
A ``HistGradientBoostingClassifier`` learns from a lesion-rich sample of the
candidates, drawn subject by subject so that memory stays bounded: lesion
voxels, the rim just outside each lesion (to learn where the border is) and
other dark voxels (CSF, grey matter, perivascular spaces...): "hard" negatives.
Lesions are much rarer in the images than in this sample, so the classifier's
probabilities are off: after training, a threshold is tuned for Dice on a few
training subjects, and the probabilities are shifted so that this threshold
lands at 0.5. The probability map is smoothed a little (neighbours agree) and
predicted lesions smaller than ``MIN_LESION_ML`` are removed.

To be fast, everything is computed on a 2 mm grid (an eighth of the voxels of
the 1 mm ATLAS grid) and the probabilities are interpolated back to 1 mm.

Scores and cost
---------------
Default synthetic sample (40 train / 16 test subjects, 1 mm), 2 CPU cores:
CV Dice 0.586 ± 0.085, test Dice 0.638 (lesion-wise F1 0.61, volume
difference 4.1 mL); ``ramp-test --quick-test`` 79 s, full ``ramp-test`` 401 s,
peak memory 0.6 GB (measured with ``bench/bench_baselines.py``).

Try next
--------
* Auto-context: train a second classifier whose features also hold the first
  one's smoothed probabilities (a voxel next to a likely lesion is more likely).
* Refine at 1 mm near predicted borders only (the 2 mm grid blurs small
  lesions; see ``_grow``).
* Correct each image's bias field (N4) first, or normalize per cohort
  (``X.cohorts``): scanners differ in contrast.
"""

import numpy as np
from nilearn.datasets import struct
from nilearn.image import load_img, new_img_like, resample_img
from scipy import ndimage
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from atlas_ramp.rules import shift_probability, small_components

# --- Features -----------------------------------------------------------------
# Features are computed on a grid of about this voxel size (mm); data already
# that coarse (e.g. the 4 mm data of the tests) is used as it is.
WORKING_VOXEL_MM = 2.0
# Gaussian smoothing scales (sigma, mm) of the intensity features.
SMOOTHING_MM = (2.0, 4.0, 8.0)
# Only brain voxels darker than this (robust z-score) are classified; the others
# (most of the white matter) are never lesion. It keeps ~99% of lesion voxels.
CANDIDATE_Z = -0.3

# --- Training sample: at most this many voxels of each kind per subject --------
MAX_LESION_VOXELS = 2000
N_RIM_VOXELS = 1000
N_OTHER_VOXELS = 3000

# --- Classifier ---------------------------------------------------------------
MAX_ITER = 100
LEARNING_RATE = 0.2
MAX_LEAF_NODES = 31
MIN_SAMPLES_LEAF = 40

# --- Decision threshold and post-processing -----------------------------------
# Smoothing (sigma, mm) of the probability map.
PROBA_SMOOTHING_MM = 2.0
# Candidate thresholds on the (smoothed) probability, tuned for Dice on this
# many training subjects.
THRESHOLDS = 1 / (1 + np.exp(-np.linspace(-3.0, 5.0, 33)))
N_CALIBRATION_SUBJECTS = 6
# Predicted lesions smaller than this (mL) are removed.
MIN_LESION_ML = 0.2

RANDOM_STATE = 0

# Gradient boosting runs on OpenMP threads. On a busy machine (a shared server,
# other programs running) they keep waiting for each other and can be several
# times slower than one thread; at this data size a single thread costs little.
# None: one thread per core.
N_THREADS = 1


# ---------------------------------------------------------------------------
# Grids: the data grid, and the coarser working grid
# ---------------------------------------------------------------------------


def _working_factor(affine):
    """Keep every n-th voxel so that voxels are about ``WORKING_VOXEL_MM``."""
    voxel_mm = float(np.abs(affine[:3, :3]).max(axis=0).min())
    return max(1, int(round(WORKING_VOXEL_MM / voxel_mm)))


def _shrink(volume, factor):
    """Smooth (against aliasing), then keep voxels 0, factor, 2 * factor, ..."""
    if factor == 1:
        return volume
    # One axis at a time (a 3D Gaussian is three 1D ones), shrinking as we go:
    # the same result as smoothing everything first, twice as fast.
    for axis in range(3):
        volume = ndimage.gaussian_filter1d(volume, 0.4 * factor, axis, truncate=2.0)
        keep = [slice(None)] * 3
        keep[axis] = slice(None, None, factor)
        volume = volume[tuple(keep)]
    return np.ascontiguousarray(volume)


def _grow(coarse, shape, factor):
    """Undo :func:`_shrink`: linear interpolation back to the data grid."""
    fine = coarse
    for axis in range(3):
        fine = np.moveaxis(fine, axis, 0)
        n = fine.shape[0]
        grown = np.empty((factor * (n - 1) + 1, *fine.shape[1:]), np.float32)
        grown[::factor] = fine  # sample k sits on data voxel factor * k
        for step in range(1, factor):
            weight = step / factor
            grown[step::factor] = (1 - weight) * fine[:-1] + weight * fine[1:]
        fine = np.moveaxis(grown, 0, axis)
    # The last data voxels (beyond the last sample) copy their neighbour.
    padding = [
        (0, max(0, want - have)) for want, have in zip(shape, fine.shape, strict=True)
    ]
    fine = np.pad(fine, padding, mode="edge")
    return fine[: shape[0], : shape[1], : shape[2]]


def _robust_z(volume, brain):
    """0 at the median brain intensity, 1 per interquartile range.

    Scanners (and cohorts) scale intensities differently; this puts every image
    on one scale.
    """
    q25, median, q75 = np.percentile(volume[brain], [25, 50, 75])
    return (volume - median) / max(q75 - q25, 1e-6)


class _Atlas:
    """The MNI152 template and tissue maps on the working grid of the data.

    Parameters
    ----------
    affine : ndarray of shape (4, 4)
        The data's voxel-to-MNI affine (``X.affine``).
    shape : tuple of int
        The data's volume shape (``X.volume_shape``).
    """

    def __init__(self, affine, shape):
        self.data_shape = tuple(shape)
        self.factor = _working_factor(affine)
        factor = self.factor
        self.shape = tuple(len(range(0, n, factor)) for n in shape)
        # Working grid: every factor-th data voxel, starting at voxel 0.
        self.affine = affine.copy()
        self.affine[:3, :3] *= factor
        voxel_mm = float(np.abs(self.affine[:3, :3]).max(axis=0).min())

        def resample(path):
            image = load_img(path)
            data = image.get_fdata(dtype=np.float32)
            # Smooth before shrinking (1 mm template -> coarser grid).
            sigma = 0.4 * voxel_mm / float(np.abs(image.affine[:3, :3]).max())
            if sigma > 0.3:
                data = ndimage.gaussian_filter(data, sigma, truncate=2.0)
            image = new_img_like(image, data, copy_header=False)
            image = resample_img(
                image,
                target_affine=self.affine,
                target_shape=self.shape,
                interpolation="linear",
                force_resample=True,
                copy_header=True,
            )
            return image.get_fdata(dtype=np.float32)

        template = resample(struct.MNI152_FILE_PATH)
        grey = resample(struct.GM_MNI152_FILE_PATH)
        white = resample(struct.WM_MNI152_FILE_PATH)
        # The nilearn template is skull-stripped: the brain is where it is bright;
        # dilated a little so that lesions on the cortical surface are kept.
        inside = ndimage.binary_fill_holes(template > 0.2 * template.max())
        self.inside = inside
        self.brain = ndimage.binary_dilation(inside)
        self.template_z = _robust_z(template, inside)
        self.template_smooth = ndimage.gaussian_filter(self.template_z, 4 / voxel_mm)
        scale = max(float(grey.max()), float(white.max()), 1e-6)
        self.grey, self.white = grey / scale, white / scale
        self.csf = np.clip(inside - self.grey - self.white, 0, 1)
        # MNI coordinates (mm) of each working voxel.
        grid = np.indices(self.shape, dtype=np.float32).reshape(3, -1)
        mni = self.affine[:3, :3] @ grid + self.affine[:3, 3:]
        self.mni = [axis.reshape(self.shape).astype(np.float32) for axis in mni]
        self.voxel_mm = voxel_mm
        # x = 0 splits the hemispheres. After flipping axis 0, the mirror of
        # voxel i is mirror_offset voxels further along x: 0 when the grid is
        # centred on x = 0 (the 1 mm ATLAS grid), a fraction of a voxel on a
        # block-averaged grid.
        x_origin, x_step = self.affine[0, 3], self.affine[0, 0]
        self.mirror_offset = self.shape[0] - 1 + 2 * x_origin / x_step

    def mirror(self, volume):
        """The image seen in a mirror: each voxel gets its mirror voxel's value."""
        flipped = np.flip(volume, axis=0)
        if abs(self.mirror_offset) < 0.01:
            return flipped
        return ndimage.shift(flipped, (-self.mirror_offset, 0, 0), order=1)


FEATURE_NAMES = (
    ["intensity"]
    + [f"smooth_{s:g}mm" for s in SMOOTHING_MM]
    + [f"contrast_{s:g}mm" for s in SMOOTHING_MM]
    + ["asymmetry"]
    + [f"asymmetry_{s:g}mm" for s in SMOOTHING_MM]
    + ["minus_template", "minus_template_4mm"]
    + ["grey_matter", "white_matter", "csf"]
    + ["abs_x_mm", "y_mm", "z_mm"]
)


def _features(volume, atlas):
    """Features of the candidate voxels of one image, on the working grid.

    Returns
    -------
    features : ndarray of shape (n_candidates, n_features), float32
        One row per candidate voxel, columns as in ``FEATURE_NAMES``.
    candidates : ndarray of bool, the working grid's shape
        Brain voxels darker than ``CANDIDATE_Z``: the only ones classified.
    """
    image = _shrink(volume.astype(np.float32, copy=False), atlas.factor)
    z = _robust_z(image, atlas.inside).astype(np.float32)
    candidates = atlas.brain & (z < CANDIDATE_Z)
    smooth = [ndimage.gaussian_filter(z, s / atlas.voxel_mm) for s in SMOOTHING_MM]

    columns = (
        [z]
        + smooth
        + [z - s for s in smooth]
        + [z - atlas.mirror(z)]
        + [s - atlas.mirror(s) for s in smooth]
        + [z - atlas.template_z, smooth[1] - atlas.template_smooth]
        + [atlas.grey, atlas.white, atlas.csf]
        + [np.abs(atlas.mni[0]), atlas.mni[1], atlas.mni[2]]
    )
    features = np.stack([column[candidates] for column in columns], axis=1)
    return features.astype(np.float32, copy=False), candidates


def _sample_voxels(lesion, candidates, rng):
    """Which candidates of one subject to train on (indices into its rows)."""
    is_lesion = lesion[candidates]
    rim = ndimage.binary_dilation(lesion, iterations=2) & ~lesion
    is_rim = rim[candidates]

    def pick(where, n):
        where = np.flatnonzero(where)
        return rng.choice(where, min(n, where.size), replace=False)

    chosen = [
        pick(is_lesion, MAX_LESION_VOXELS),
        # Just outside the lesion: teaches where its border is.
        pick(is_rim, N_RIM_VOXELS),
        # Anywhere else: CSF, dark grey matter, perivascular spaces, ...
        pick(~is_lesion & ~is_rim, N_OTHER_VOXELS),
    ]
    return np.unique(np.concatenate(chosen))


def _remove_small_components(proba, min_voxels):
    """Zero the probability of predicted lesions smaller than ``min_voxels``."""
    proba[small_components(proba >= 0.5, min_voxels)] = 0.0
    return proba


class VoxelClassifier:
    """Gradient-boosted trees on per-voxel features (see the module docstring)."""

    def fit(self, X, y):
        self.atlas_ = _Atlas(X.affine, X.volume_shape)
        factor = self.atlas_.factor
        rng = np.random.default_rng(RANDOM_STATE)
        # A few subjects, evenly spread, on which to tune the threshold (step 3).
        calibration_subjects = (
            np.linspace(0, len(X) - 1, min(len(X), N_CALIBRATION_SUBJECTS))
            .round()
            .astype(int)
        )

        # 1. Stream the subjects: keep the features of a few thousand voxels each
        # (of all candidates for the calibration subjects).
        features, labels, calibration = [], [], []
        for i in range(len(X)):
            subject_features, candidates = _features(X[i], self.atlas_)
            # Label of a working voxel: the label of the data voxel it sits on.
            lesion = np.ascontiguousarray(y[i][::factor, ::factor, ::factor])
            chosen = _sample_voxels(lesion, candidates, rng)
            features.append(subject_features[chosen])
            labels.append(lesion[candidates][chosen])
            if i in calibration_subjects:
                calibration.append((subject_features, candidates, lesion))
        features, labels = np.concatenate(features), np.concatenate(labels)

        # 2. The classifier; 3. the threshold, tuned on the calibration subjects.
        with threadpool_limits(N_THREADS, user_api="openmp"):
            self.classifier_ = HistGradientBoostingClassifier(
                max_iter=MAX_ITER,
                learning_rate=LEARNING_RATE,
                max_leaf_nodes=MAX_LEAF_NODES,
                min_samples_leaf=MIN_SAMPLES_LEAF,
                early_stopping=False,
                random_state=RANDOM_STATE,
            ).fit(features, labels)
            self.threshold_ = self._best_threshold(calibration)
        return self

    def _best_threshold(self, calibration):
        """The threshold that gives the best mean Dice (on the working grid)."""
        dice = np.zeros(len(THRESHOLDS))
        for features, candidates, lesion in calibration:
            proba = self._working_proba(features, candidates)
            for position, threshold in enumerate(THRESHOLDS):
                predicted = proba >= threshold
                total = np.count_nonzero(lesion) + np.count_nonzero(predicted)
                overlap = np.count_nonzero(lesion & predicted)
                dice[position] += 1.0 if total == 0 else 2 * overlap / total
        return float(THRESHOLDS[int(np.argmax(dice))])

    def _working_proba(self, features, candidates):
        """The classifier's lesion probability map, on the working grid."""
        proba = np.zeros(self.atlas_.shape, np.float32)
        if len(features):
            proba[candidates] = self.classifier_.predict_proba(features)[:, 1]
        # Neighbours usually agree: smoothing removes isolated, noisy voxels.
        return ndimage.gaussian_filter(proba, PROBA_SMOOTHING_MM / self.atlas_.voxel_mm)

    def predict_proba(self, X):
        """Lesion probabilities, shape ``X.shape``, in [0, 1]."""
        atlas = self.atlas_
        if X.volume_shape != atlas.data_shape:
            raise ValueError(
                f"fit saw volumes of shape {atlas.data_shape}, "
                f"predict got {X.volume_shape}."
            )
        # Lesion size in working voxels (each stands for factor**3 data voxels).
        min_voxels = MIN_LESION_ML / (X.voxel_volume_ml * atlas.factor**3)
        probas = np.zeros(X.shape, np.float32)
        with threadpool_limits(N_THREADS, user_api="openmp"):
            for i in range(len(X)):
                proba = self._working_proba(*_features(X[i], atlas))
                proba = shift_probability(proba, self.threshold_)
                proba = _remove_small_components(proba, min_voxels)
                probas[i] = _grow(proba, X.volume_shape, atlas.factor)
        return probas

    def predict(self, X):
        return self.predict_proba(X) >= 0.5


def get_estimator():
    return VoxelClassifier()
