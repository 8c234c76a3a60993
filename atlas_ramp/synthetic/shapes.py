"""Shapes drawn on the grid: oriented ellipsoids with a partial-volume rim.

Lesions, perivascular spaces and punctate white-matter hypointensities are all
ellipsoids, randomly oriented, whose border fades over a few millimetres.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.stats import ortho_group

from .anatomy import Anatomy


def random_orientation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random orientation of an ellipsoid, as a 3 x 3 matrix.

    :func:`scipy.stats.ortho_group` draws a Haar-random orthogonal matrix (QR
    decomposition of a Gaussian matrix). Its determinant may be -1: an
    ellipsoid is symmetric, so a reflection orients it as well as the rotation
    :func:`scipy.stats.special_ortho_group` would make of it, and the sample
    stays the one that earlier versions drew (``Rotation.random`` would draw
    other numbers).
    """
    return ortho_group.rvs(3, random_state=rng)


def tilted_z_axis(tilt_radians) -> np.ndarray:
    """Rotation tilting the z axis by small angles (radians) about x, then y."""
    return Rotation.from_euler("xy", tilt_radians).as_matrix()


def ellipsoid_radius(grid_mm, centre_mm, axes_mm, rotation) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) on a grid box.

    Written as a quadratic form of broadcast 1D coordinates, so that only two
    operations touch the full box.

    Parameters
    ----------
    grid_mm : tuple of three 1D arrays
        MNI coordinates of the box's voxels along x, y and z.
    centre_mm : array-like of 3 floats
    axes_mm : array-like of 3 floats
        Semi-axes.
    rotation : ndarray of shape (3, 3)
        Orientation (columns: the directions of the semi-axes).
    """
    metric = rotation @ np.diag(1.0 / np.asarray(axes_mm) ** 2) @ rotation.T
    x = (grid_mm[0] - centre_mm[0])[:, None, None]
    y = (grid_mm[1] - centre_mm[1])[None, :, None]
    z = (grid_mm[2] - centre_mm[2])[None, None, :]
    xy = metric[0, 0] * x * x + metric[1, 1] * y * y + 2 * metric[0, 1] * x * y
    xz = 2 * metric[0, 2] * x * z
    yz = metric[2, 2] * z * z + 2 * metric[1, 2] * y * z
    radius_sq = (xy + yz).astype(np.float32) + xz.astype(np.float32)
    return np.sqrt(np.maximum(radius_sq, 0, out=radius_sq), out=radius_sq)


def rim_width(anatomy: Anatomy, rim_mm: float) -> float:
    """Width (mm) of a partial-volume border on this grid."""
    # A coarse voxel averages over its width: the transition is at least that.
    return float(np.hypot(rim_mm, 0.6 * anatomy.downsample))
