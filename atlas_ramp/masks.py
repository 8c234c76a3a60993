"""Sparse lesion masks and sparse lesion probabilities.

A dense uint8 mask on the ATLAS grid is 197 × 233 × 189 = 8.7 M voxels (8.7 MB),
while the median lesion has about 5,000 voxels. Storing only the lesion voxels
(their flat C-order indices, int32) takes about 20 kB, so 655 subjects fit in a
few MB instead of 5.7 GB.

Two classes:

* :class:`SparseMask`: a binary mask (ground truth, or a thresholded prediction).
* :class:`SparseProba`: per-voxel lesion probabilities, quantized to 8 bits.

Storage rule for probabilities (documented for blending): a probability ``p`` is
stored as ``round(255 * p)``; voxels with ``p < MIN_STORED_PROBABILITY`` (0.02)
are dropped. A submission that outputs a small background probability everywhere
therefore costs nothing, and the mean of several predictions (CV bagging,
``ramp-blend``) is underestimated by at most 0.02 + 1/510 at any voxel. A voxel is
a lesion voxel when its (quantized) probability is at least 0.5.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Probabilities below this are not stored (see module docstring).
MIN_STORED_PROBABILITY = 0.02
#: Quantization levels of a stored probability.
LEVELS = 255
#: Quantized value from which a voxel counts as lesion (p >= 0.5).
LESION_LEVEL = 128
_MIN_LEVEL = int(np.ceil(MIN_STORED_PROBABILITY * LEVELS))


class SparseMask:
    """A binary 3D mask stored as the sorted flat indices of its voxels.

    Parameters
    ----------
    indices : array-like of int
        Flat C-order indices of the mask voxels, sorted, unique.
    shape : tuple of int
        The volume shape.
    voxel_volume_ml : float
        Volume of one voxel in millilitres (0.001 for 1 mm isotropic).
    """

    __slots__ = ("indices", "shape", "voxel_volume_ml", "_lesions")

    def __init__(self, indices, shape, voxel_volume_ml: float = 0.001):
        self.indices = np.asarray(indices, dtype=np.int32)
        self.shape = tuple(int(s) for s in shape)
        self.voxel_volume_ml = float(voxel_volume_ml)
        self._lesions = None

    @classmethod
    def from_dense(cls, mask: np.ndarray, voxel_volume_ml: float = 0.001):
        """Build from a dense boolean (or 0/1) 3D array."""
        mask = np.asarray(mask)
        return cls(np.flatnonzero(mask), mask.shape, voxel_volume_ml)

    def to_dense(self) -> np.ndarray:
        """The mask as a dense boolean 3D array."""
        dense = np.zeros(int(np.prod(self.shape)), dtype=bool)
        dense[self.indices] = True
        return dense.reshape(self.shape)

    @property
    def n_voxels(self) -> int:
        return int(self.indices.size)

    @property
    def volume_ml(self) -> float:
        """Lesion volume in millilitres."""
        return self.n_voxels * self.voxel_volume_ml

    @property
    def nbytes(self) -> int:
        return int(self.indices.nbytes)

    def lesion_labels(self) -> tuple[int, np.ndarray]:
        """Label the lesions: 3D connected components with face connectivity.

        Face connectivity (6 neighbours) is scipy.ndimage.label's default, which
        the ATLAS challenge evaluator uses. Computed on the sparse voxels alone
        (a graph whose edges join face neighbours), so the cost grows with the
        number of lesion voxels, not with the image size. Cached.

        Returns
        -------
        n_lesions : int
        labels : ndarray of int32
            The lesion (0 .. n_lesions - 1) of each voxel in ``indices``.
        """
        if self._lesions is None:
            self._lesions = _face_connected_components(self.indices, self.shape)
        return self._lesions

    @property
    def n_lesions(self) -> int:
        return self.lesion_labels()[0]

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, SparseMask)
            and self.shape == other.shape
            and np.array_equal(self.indices, other.indices)
        )

    __hash__ = None

    def __repr__(self) -> str:
        return (
            f"SparseMask({self.n_voxels} voxels, {self.volume_ml:.2f} mL, "
            f"shape={self.shape})"
        )

    def __getstate__(self):
        # The lesion-label cache is cheap to rebuild; don't pickle it.
        return self.indices, self.shape, self.voxel_volume_ml

    def __setstate__(self, state):
        self.indices, self.shape, self.voxel_volume_ml = state
        self._lesions = None


#: Label lesions densely in their bounding box when it is at most this many times
#: larger than the lesion voxels (compact lesions: fast C labelling); otherwise
#: use the sparse graph (scattered voxels: cost independent of the image size).
_DENSE_BOX_RATIO = 64


def _face_connected_components(indices: np.ndarray, shape) -> tuple[int, np.ndarray]:
    n = indices.size
    if n == 0:
        return 0, np.zeros(0, dtype=np.int32)
    coords = np.unravel_index(indices, shape)
    low = [int(c.min()) for c in coords]
    box_shape = tuple(int(c.max()) - lo + 1 for c, lo in zip(coords, low, strict=True))
    if np.prod(box_shape, dtype=np.int64) <= _DENSE_BOX_RATIO * n + 4096:
        local = tuple(c - lo for c, lo in zip(coords, low, strict=True))
        box = np.zeros(box_shape, dtype=bool)
        box[local] = True
        labels, n_components = ndimage.label(box)  # default: face connectivity
        return int(n_components), (labels[local] - 1).astype(np.int32)
    return _sparse_components(indices, coords, shape)


def _sparse_components(indices, coords, shape) -> tuple[int, np.ndarray]:
    n = indices.size
    nx, ny, nz = shape
    rows, cols = [], []
    # One step along each axis; a neighbour exists if its flat index is present
    # (and the step does not wrap around the volume border).
    for axis, step in ((0, ny * nz), (1, nz), (2, 1)):
        inside = coords[axis] < shape[axis] - 1
        source = np.flatnonzero(inside)
        target_index = indices[source].astype(np.int64) + step
        position = np.searchsorted(indices, target_index)
        position = np.minimum(position, n - 1)
        found = indices[position] == target_index
        rows.append(source[found])
        cols.append(position[found])
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n))
    n_components, labels = connected_components(graph, directed=False)
    return int(n_components), labels.astype(np.int32)


class SparseProba:
    """Per-voxel lesion probabilities, stored sparsely and quantized to 8 bits.

    Parameters
    ----------
    indices : array-like of int
        Sorted unique flat indices of stored voxels.
    levels : array-like of uint8
        ``round(255 * p)`` for each stored voxel.
    shape : tuple of int
    voxel_volume_ml : float
    """

    __slots__ = ("indices", "levels", "shape", "voxel_volume_ml", "_mask")

    def __init__(self, indices, levels, shape, voxel_volume_ml: float = 0.001):
        self.indices = np.asarray(indices, dtype=np.int32)
        self.levels = np.asarray(levels, dtype=np.uint8)
        self.shape = tuple(int(s) for s in shape)
        self.voxel_volume_ml = float(voxel_volume_ml)
        self._mask = None

    @classmethod
    def from_dense(cls, proba: np.ndarray, voxel_volume_ml: float = 0.001):
        """Sparsify a dense probability (or boolean) volume.

        Values must already be checked to lie in [0, 1] (the workflow does).
        """
        proba = np.asarray(proba)
        flat = proba.reshape(-1)
        if flat.dtype == bool:
            indices = np.flatnonzero(flat)
            levels = np.full(indices.size, LEVELS, dtype=np.uint8)
        else:
            indices = np.flatnonzero(flat >= MIN_STORED_PROBABILITY)
            levels = np.rint(flat[indices].astype(np.float32) * LEVELS)
            keep = levels >= _MIN_LEVEL
            indices, levels = indices[keep], levels[keep].astype(np.uint8)
        return cls(indices, levels, proba.shape, voxel_volume_ml)

    @classmethod
    def from_mask(cls, mask: SparseMask):
        """Probability 1 on the mask, 0 elsewhere."""
        levels = np.full(mask.indices.size, LEVELS, dtype=np.uint8)
        return cls(mask.indices, levels, mask.shape, mask.voxel_volume_ml)

    def to_dense(self) -> np.ndarray:
        """Dense float32 probabilities."""
        dense = np.zeros(int(np.prod(self.shape)), dtype=np.float32)
        dense[self.indices] = self.levels / np.float32(LEVELS)
        return dense.reshape(self.shape)

    def binarize(self) -> SparseMask:
        """The lesion mask: voxels with probability at least 0.5 (cached)."""
        if self._mask is None:
            self._mask = SparseMask(
                self.indices[self.levels >= LESION_LEVEL],
                self.shape,
                self.voxel_volume_ml,
            )
        return self._mask

    def __getstate__(self):
        return self.indices, self.levels, self.shape, self.voxel_volume_ml

    def __setstate__(self, state):
        self.indices, self.levels, self.shape, self.voxel_volume_ml = state
        self._mask = None

    @property
    def nbytes(self) -> int:
        return int(self.indices.nbytes + self.levels.nbytes)

    def __repr__(self) -> str:
        return f"SparseProba({self.indices.size} stored voxels, shape={self.shape})"


def mean_probabilities(probas: list[SparseProba]) -> SparseProba:
    """Voxel-wise mean of several sparse probability maps (absent voxel = 0).

    Used to combine predictions (CV bagging, blending). A map may appear several
    times in ``probas`` to weight it (greedy blending selects with replacement).
    """
    first = probas[0]
    if len(probas) == 1:
        return first
    for other in probas[1:]:
        if other.shape != first.shape:
            raise ValueError(
                f"Cannot combine predictions of shapes {first.shape} and {other.shape}."
            )
    all_indices = np.concatenate([p.indices for p in probas])
    all_levels = np.concatenate([p.levels.astype(np.uint32) for p in probas])
    union, inverse = np.unique(all_indices, return_inverse=True)
    sums = np.bincount(inverse, weights=all_levels, minlength=union.size)
    levels = np.rint(sums / len(probas))
    keep = levels >= _MIN_LEVEL
    return SparseProba(
        union[keep], levels[keep].astype(np.uint8), first.shape, first.voxel_volume_ml
    )
