"""Smooth random fields and what they do to an image: deformation, bias, noise.

A smooth field is random values on a coarse grid of control points, interpolated
with a Gaussian kernel (:class:`SmoothNoise`). It gives each subject its own
anatomy (a deformation of a few millimetres), each scan its own intensity
inhomogeneity (a multiplicative bias field) and each lesion its own irregular
outline. Rician noise is what magnitude MR images show.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .anatomy import MAX_DISPLACEMENT_MM, Anatomy, template_1mm


class SmoothNoise:
    """Smooth random field: random values on a coarse grid, Gaussian-interpolated.

    The field is defined in mm. Evaluating it on any axis-aligned grid costs
    three small matrix products (the interpolation is separable), which is how
    deformation and bias fields stay cheap at 1 mm; a general-purpose filter
    (``scipy.ndimage.zoom`` of the control grid) would work on the full grid.
    Values have unit variance.

    Parameters
    ----------
    rng : numpy.random.Generator
    lower, upper : array-like of 3 floats
        Region (mm) where the field will be evaluated.
    spacing : float
        Control point spacing (mm); features are about twice as large.
    """

    def __init__(self, rng, lower, upper, spacing: float):
        lower = np.asarray(lower, dtype=float)
        upper = np.asarray(upper, dtype=float)
        self.spacing = float(spacing)
        self.origin = lower - self.spacing
        counts = np.ceil((upper - lower) / self.spacing).astype(int) + 3
        self.values = rng.standard_normal(tuple(counts), dtype=np.float32)

    def _weights(self, axis: int, coords_mm) -> np.ndarray:
        control = self.origin[axis] + self.spacing * np.arange(self.values.shape[axis])
        distance = (np.asarray(coords_mm, float)[:, None] - control[None, :]) / (
            self.spacing
        )
        weights = np.exp(-0.5 * distance**2)
        # Unit L2 norm per row keeps the output at unit variance.
        weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))
        return weights.astype(np.float32)

    def on_grid(self, xs, ys, zs) -> np.ndarray:
        """Field on the grid ``xs x ys x zs`` (1D MNI coordinates, mm)."""
        field_ = np.tensordot(self._weights(0, xs), self.values, axes=(1, 0))
        field_ = np.tensordot(field_, self._weights(1, ys), axes=(1, 1))
        return np.tensordot(field_, self._weights(2, zs), axes=(1, 1))


def draw_displacement(
    anatomy: Anatomy, rng, amplitude_mm: tuple = (1.2, 2.5)
) -> list[np.ndarray]:
    """Smooth random displacement (mm) on the warp box, one array per axis.

    Parameters
    ----------
    anatomy : Anatomy
    rng : numpy.random.Generator
    amplitude_mm : (float, float)
        Range of the field's standard deviation (mm, per axis); values are
        clipped to :data:`~atlas_ramp.synthetic.anatomy.MAX_DISPLACEMENT_MM`.
    """
    template = template_1mm()
    shape_1mm = np.array(template["t1"].shape)
    lower = template["affine"][:3, 3]
    upper = lower + shape_1mm - 1
    amplitude = rng.uniform(*amplitude_mm)
    fields = [SmoothNoise(rng, lower, upper, spacing=20.0) for _ in range(3)]
    grid = anatomy.grid_mm(anatomy.warp_box)
    limit = MAX_DISPLACEMENT_MM
    return [
        np.clip(
            f.on_grid(*grid) * np.float32(amplitude), -limit, limit, dtype=np.float32
        )
        for f in fields
    ]


def trilinear(volumes, coords) -> list[np.ndarray]:
    """Sample volumes at fractional voxel coordinates ``(3, n)``, edges clamped.

    Written by hand: faster than ``scipy.ndimage.map_coordinates(order=1)`` for
    millions of points, and the weights are shared by all volumes.
    """
    shape = volumes[0].shape
    strides = (shape[1] * shape[2], shape[2], 1)
    base = np.zeros(coords.shape[1], dtype=np.int64)
    fractions = []
    for axis in range(3):
        position = np.clip(coords[axis], 0, shape[axis] - 1.001)
        floor = np.floor(position)
        base += floor.astype(np.int64) * strides[axis]
        fractions.append((position - floor).astype(np.float32))
    fx, fy, fz = fractions
    sx, sy, sz = strides
    results = []
    for volume in volumes:
        flat = volume.reshape(-1)

        def along_z(offset, flat=flat):
            low = flat[base + offset]
            return low + fz * (flat[base + offset + sz] - low)

        c00, c01 = along_z(0), along_z(sy)
        c10, c11 = along_z(sx), along_z(sx + sy)
        c0 = c00 + fy * (c01 - c00)
        c1 = c10 + fy * (c11 - c10)
        results.append(c0 + fx * (c1 - c0))
    return results


def warp(anatomy: Anatomy, displacement, volumes) -> list[np.ndarray]:
    """Deform template-space volumes: ``out(x) = volume(x + displacement(x))``."""
    coords = anatomy.warp_coords.copy()
    for axis in range(3):
        shift = displacement[axis].reshape(-1)[anatomy.warp_index_in_box]
        coords[axis] += shift / anatomy.downsample
    warped = []
    for values in trilinear(volumes, coords):
        out = np.zeros(anatomy.shape, dtype=np.float32)
        out.reshape(-1)[anatomy.warp_index] = values
        warped.append(out)
    return warped


def source_coords(anatomy: Anatomy, box, displacement) -> np.ndarray:
    """Template-space voxel coordinates ``(3, n)`` of the voxels of a box."""
    local = tuple(
        slice(b.start - w.start, b.stop - w.start)
        for b, w in zip(box, anatomy.warp_box, strict=True)
    )
    index = np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij")
    return np.stack(
        [
            (index[d] + displacement[d][local] / anatomy.downsample).ravel()
            for d in range(3)
        ]
    ).astype(np.float32)


def bias_field(anatomy: Anatomy, rng) -> np.ndarray:
    """A smooth unit-variance field on the warp box (log of the bias, unscaled)."""
    field_ = SmoothNoise(rng, [-100, -140, -80], [100, 100, 90], spacing=45.0)
    return field_.on_grid(*anatomy.grid_mm(anatomy.warp_box))


def add_rician_noise(values: np.ndarray, level: float, rng) -> np.ndarray:
    """Rician noise: the magnitude of a signal with Gaussian noise on both parts.

    Parameters
    ----------
    values : ndarray of float32
        Noise-free magnitudes; modified in place.
    level : float
        Standard deviation of the Gaussian noise of each part.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of float32
    """
    noise_real = rng.standard_normal(values.size, dtype=np.float32)
    noise_imaginary = rng.standard_normal(values.size, dtype=np.float32)
    noise_real *= np.float32(level)
    noise_imaginary *= np.float32(level)
    values += noise_real
    # Written out: np.hypot is several times slower than this.
    return np.sqrt(values * values + noise_imaginary * noise_imaginary)


def misregister(anatomy: Anatomy, t1, mask, rng, shift_mm, degrees):
    """Move image and mask together by a small random rigid motion.

    What an imperfect registration to MNI leaves: the brain sits a few
    millimetres and degrees off the template, while the affine still says MNI.
    The image is resampled linearly, the mask by nearest neighbour (it stays a
    0/1 mask, aligned with the image to half a voxel).

    Parameters
    ----------
    anatomy : Anatomy
    t1 : ndarray of float32
        Image in the cohort's units (whole numbers, 0 outside the brain).
    mask : ndarray of uint8
    rng : numpy.random.Generator
        The subject's misregistration stream.
    shift_mm, degrees : (float, float)
        Ranges of the length of the shift and of the rotation angle; the
        directions (shift and rotation axis) are uniformly random.

    Returns
    -------
    t1, mask : ndarray
        Moved copies.
    motion : dict
        ``shift_mm`` (x, y, z), ``rotation_degrees`` and ``rotation_axis``
        (a unit vector): the brain point p moved to ``R p + shift``.
    """
    direction = rng.standard_normal(3)
    shift = rng.uniform(*shift_mm) * direction / np.linalg.norm(direction)
    axis = rng.standard_normal(3)
    angle = rng.uniform(*degrees)
    rotation = Rotation.from_rotvec(np.deg2rad(angle) * axis / np.linalg.norm(axis))
    # World point p moves to R p + shift (about the MNI origin, near the brain's
    # centre). Resampling needs the inverse, in voxels: for an output voxel v
    # at p = A v, the input point is R^T (p - shift).
    affine = anatomy.affine
    inverse = rotation.inv().as_matrix()
    to_world, origin = affine[:3, :3], affine[:3, 3]
    matrix = np.linalg.solve(to_world, inverse @ to_world)
    offset = np.linalg.solve(to_world, inverse @ (origin - shift) - origin)
    moved_t1 = ndimage.affine_transform(t1, matrix, offset, order=1)
    moved_mask = ndimage.affine_transform(mask, matrix, offset, order=0)
    if not moved_mask.any():  # a one-voxel lesion fell between output voxels
        voxel = np.argwhere(mask)[0]
        target = np.linalg.solve(matrix, voxel - offset)
        target = np.clip(np.rint(target).astype(int), 0, np.array(mask.shape) - 1)
        moved_mask[tuple(target)] = 1
    motion = {
        "shift_mm": [round(float(value), 2) for value in shift],
        "rotation_degrees": round(float(angle), 2),
        "rotation_axis": [round(float(v), 3) for v in axis / np.linalg.norm(axis)],
    }
    return np.rint(np.maximum(moved_t1, 0)), moved_mask, motion
