"""The template anatomy: MNI152 2009a T1, tissue maps and regions, on any grid.

Every synthetic subject starts from the MNI152 2009a symmetric T1 template and its
grey/white matter maps, which nilearn ships inside its package (no download): the
grid of ATLAS, 197 x 233 x 189 voxels of 1 mm. This module reads them with
nilearn's public loaders, block-averages them to coarser grids (tests use 4 mm
voxels) and derives what the generator needs: tissue fractions, the regions
where lesions and distractors go, the distance to the ventricles, and the box
where a deformed brain can land.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: Coarsest grid: 8 mm voxels.
MAX_DOWNSAMPLE = 8
#: Largest displacement of a subject's random deformation (mm).
MAX_DISPLACEMENT_MM = 7.0
# Margin around the brain where a deformed image can be non-zero (mm): larger
# than the largest displacement.
WARP_MARGIN_MM = 10.0
#: Region where white-matter hypointensities are drawn (MNI mm, min and max).
WMH_REGION_MM = np.array([[-45.0, -65.0, -20.0], [45.0, 50.0, 50.0]])


@functools.lru_cache(maxsize=1)
def template_1mm() -> dict:
    """nilearn's MNI152 2009a symmetric template and tissue maps at 1 mm.

    Returns
    -------
    dict
        ``affine``; ``t1``, ``gm`` and ``wm`` as 8-bit values (0-255);
        ``brain`` (``t1 > 0``); ``levels``: typical template intensity (0-1)
        of ``csf``, ``gm`` and ``wm``, from nearly pure voxels.
    """
    # Imported here: nilearn.datasets takes about a second to import (pandas,
    # scikit-learn...), and only building a sample needs it.
    from nilearn.datasets import (
        load_mni152_gm_template,
        load_mni152_template,
        load_mni152_wm_template,
    )

    t1_image = load_mni152_template(resolution=1)
    images = {
        "t1": t1_image,
        "gm": load_mni152_gm_template(resolution=1),
        "wm": load_mni152_wm_template(resolution=1),
    }
    maps = {name: _eight_bit(name, image) for name, image in images.items()}
    t1, gm, wm = maps["t1"], maps["gm"], maps["wm"]
    brain = t1 > 0
    csf = np.clip(1.0 - (gm / 255.0) - (wm / 255.0), 0.0, 1.0) * brain
    levels = {
        "csf": float(np.median(t1[csf > 0.9]) / 255.0),
        "gm": float(np.median(t1[gm > 0.9 * 255]) / 255.0),
        "wm": float(np.median(t1[wm > 0.9 * 255]) / 255.0),
    }
    return {
        "affine": t1_image.affine.copy(),
        "t1": t1,
        "gm": gm,
        "wm": wm,
        "brain": brain,
        "levels": levels,
    }


def _eight_bit(name: str, image) -> np.ndarray:
    """The 8-bit values that nilearn stores, from its loader's 0-1 floats.

    nilearn ships these maps as 8-bit integers and its loaders divide them by
    their maximum (255). The generator works on the stored integers (its
    arithmetic, and so the sample, is defined on them): rounding back is exact,
    which is checked here so that a change in nilearn cannot go unnoticed.
    """
    values = np.asarray(image.dataobj, dtype=np.float32)
    eight_bit = np.rint(values * 255).astype(np.uint8)
    if not np.array_equal(eight_bit / np.float32(255), values):
        raise RuntimeError(
            f"nilearn's MNI152 {name} map is no longer stored in 8 bits; the "
            "synthetic generator needs updating for this nilearn version."
        )
    return eight_bit


def block_average(volume: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor**3`` blocks; the grid is zero-padded at its far end."""
    volume = np.asarray(volume, dtype=np.float32)
    if factor == 1:
        return volume.copy()
    padding = [(0, (-size) % factor) for size in volume.shape]
    padded = np.pad(volume, padding)
    # Sum the factor**3 strided sub-grids: much faster than a 6D mean.
    total = np.zeros([size // factor for size in padded.shape], dtype=np.float32)
    for i in range(factor):
        for j in range(factor):
            for k in range(factor):
                total += padded[i::factor, j::factor, k::factor]
    return total / np.float32(factor**3)


def downsampled_affine(affine: np.ndarray, downsample: int) -> np.ndarray:
    """Affine of a grid whose voxels are ``downsample**3`` blocks of ``affine``'s.

    The corner of the field of view stays where it was: voxel 0 of the coarse
    grid is the block of fine voxels ``0 .. downsample-1``, so its centre moves
    by ``(downsample - 1) / 2`` fine voxels. World coordinates of anatomy are
    therefore the same on every grid.

    Parameters
    ----------
    affine : ndarray of shape (4, 4)
        Affine of the fine grid.
    downsample : int
        Block size (1 returns a copy of ``affine``).

    Returns
    -------
    ndarray of shape (4, 4)
    """
    affine = np.asarray(affine, dtype=float)
    coarse = affine.copy()
    coarse[:3, :3] = affine[:3, :3] * downsample
    coarse[:3, 3] = affine[:3, :3] @ np.full(3, (downsample - 1) / 2) + affine[:3, 3]
    return coarse


def _nearest_lookup(coarse: np.ndarray, coarse_factor: int, shape, factor: int):
    """Resample a map of a ``coarse_factor`` grid onto a ``factor`` grid (nearest)."""
    indices = []
    for axis, size in enumerate(shape):
        centre_1mm = factor * np.arange(size) + (factor - 1) / 2
        index = np.floor(centre_1mm / coarse_factor + 1e-6).astype(int)
        indices.append(np.clip(index, 0, coarse.shape[axis] - 1))
    return coarse[np.ix_(*indices)]


@functools.lru_cache(maxsize=1)
def coarse_regions() -> dict:
    """Anatomical regions on a 2 mm grid, in MNI coordinates.

    Lesion centres are drawn from these candidate points, so lesion placement
    does not depend on the output grid. Regions are defined by MNI coordinates,
    tissue maps and depth below the brain surface:

    * ``cortical``: grey matter within 6 mm of the surface, above the posterior
      fossa;
    * ``subcortical``: deep (more than 16 mm from the surface) grey or white
      matter, 10-32 mm from the midline, between y = -38 and 22 mm and
      z = -6 and 34 mm: basal ganglia, thalamus, internal capsule, corona radiata;
    * ``cerebellum_brainstem``: tissue of the posterior fossa (z below about
      -20 mm, posterior);
    * ``basal_ganglia`` and ``deep_white_matter``: where perivascular spaces and
      punctate white-matter hypointensities go;
    * ``ventricles``: deep cerebrospinal fluid near the midline.

    Returns
    -------
    dict
        ``points``: MNI coordinates (n, 3) of each region's voxels, keyed by
        ``(region, "left" | "right" | "any")``; ``ventricles``: a boolean map;
        ``factor``: 2.
    """
    template = template_1mm()
    factor = 2
    gm = block_average(template["gm"], factor) / 255.0
    wm = block_average(template["wm"], factor) / 255.0
    brain = block_average(template["brain"], factor)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    tissue = gm + wm
    affine = downsampled_affine(template["affine"], factor)
    depth = ndimage.distance_transform_edt(brain > 0.5) * factor
    grids = np.meshgrid(
        *[affine[d, d] * np.arange(n) + affine[d, 3] for d, n in enumerate(gm.shape)],
        indexing="ij",
    )
    x, y, z = grids
    ax = np.abs(x)
    posterior_fossa = ((z < -22) & (y < -40)) | (
        (z < -12) & (ax < 14) & (y < -14) & (y > -44)
    )
    regions = {
        "cortical": (gm > 0.5) & (depth <= 6) & ~posterior_fossa & (z > -30),
        "subcortical": (tissue > 0.7)
        & (csf < 0.3)
        & (ax >= 10)
        & (ax <= 32)
        & (y >= -38)
        & (y <= 22)
        & (z >= -6)
        & (z <= 34)
        & (depth >= 16),
        "cerebellum_brainstem": posterior_fossa & (tissue > 0.7) & (depth >= 4),
        "basal_ganglia": (gm > 0.6)
        & (ax >= 10)
        & (ax <= 28)
        & (y >= -12)
        & (y <= 20)
        & (z >= -6)
        & (z <= 12)
        & (depth >= 16),
        "deep_white_matter": (wm > 0.85) & (ax >= 10) & (z >= 8) & (depth >= 12),
    }
    ventricles = (csf > 0.5) & (depth >= 8) & (ax < 30) & (y > -50) & (y < 40)
    ventricles &= (z > -10) & (z < 35)
    points = {}
    for name, region in regions.items():
        coords = np.stack([x[region], y[region], z[region]], axis=1)
        points[(name, "left")] = coords[coords[:, 0] < 0]
        points[(name, "right")] = coords[coords[:, 0] >= 0]
        points[(name, "any")] = coords
    return {"points": points, "ventricles": ventricles, "factor": factor}


@dataclass(frozen=True, eq=False)
class Anatomy:
    """The template anatomy on one grid, with what the generator needs of it.

    Build it with :func:`load_anatomy` (cached). Arrays are float32 and must not
    be modified.

    Attributes
    ----------
    downsample : int
        Voxel size in mm (1 is the ATLAS grid).
    affine : ndarray of shape (4, 4)
        Voxel to MNI mm.
    t1 : ndarray
        Template T1 intensity, 0-1, zero outside the brain.
    tissue : ndarray
        Grey + white matter fraction (brain tissue, as opposed to fluid).
    white_matter : ndarray
        White matter fraction.
    ventricle_distance : ndarray
        Distance (mm) to the ventricles, near them (1000 far away).
    levels : dict
        Template intensity of ``csf``, ``gm`` and ``wm``.
    axes_mm : tuple of ndarray
        MNI coordinate of each index along x, y and z.
    """

    downsample: int
    affine: np.ndarray
    t1: np.ndarray
    tissue: np.ndarray
    white_matter: np.ndarray
    ventricle_distance: np.ndarray
    levels: dict
    axes_mm: tuple
    # Brain voxels (flat indices) with what atrophy needs there.
    brain_index: np.ndarray = field(repr=False)
    brain_csf: np.ndarray = field(repr=False)
    brain_csf_smooth: np.ndarray = field(repr=False)
    brain_ventricle_smooth: np.ndarray = field(repr=False)
    # Voxels where a deformed brain can land: a box and the points inside it.
    warp_box: tuple = field(repr=False)
    warp_index: np.ndarray = field(repr=False)
    warp_index_in_box: np.ndarray = field(repr=False)
    warp_coords: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return self.t1.shape

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL."""
        return self.downsample**3 / 1000.0

    def index_of(self, point_mm) -> np.ndarray:
        """Nearest voxel index of an MNI point, clipped to the grid."""
        index = [
            np.rint((point_mm[d] - self.affine[d, 3]) / self.affine[d, d])
            for d in range(3)
        ]
        return np.clip(np.array(index, dtype=int), 0, np.array(self.shape) - 1)

    def grid_mm(self, box) -> tuple:
        """MNI coordinates (three 1D arrays) of the voxels of an index box."""
        return tuple(self.axes_mm[d][box[d]] for d in range(3))

    def box_around(self, centre_mm, half_mm) -> tuple:
        """Index box (slices) covering ``centre +- half`` mm, clipped to the grid."""
        return box_from_axes(self.axes_mm, centre_mm, half_mm)


def box_from_axes(axes_mm, centre_mm, half_mm) -> tuple:
    """Index box (slices) of a grid given by its axes, around a point (mm)."""
    slices = []
    for d in range(3):
        axis = axes_mm[d]
        start = np.searchsorted(axis, centre_mm[d] - half_mm[d], side="left")
        stop = np.searchsorted(axis, centre_mm[d] + half_mm[d], side="right")
        start = max(int(start) - 1, 0)
        stop = min(int(stop) + 1, len(axis))
        slices.append(slice(start, max(stop, start + 1)))
    return tuple(slices)


def check_downsample(downsample) -> int:
    """``downsample`` as an int, or a ValueError saying what is allowed."""
    if int(downsample) != downsample or not 1 <= downsample <= MAX_DOWNSAMPLE:
        raise ValueError(
            f"downsample must be an integer from 1 to {MAX_DOWNSAMPLE}, got "
            f"{downsample!r}."
        )
    return int(downsample)


@functools.lru_cache(maxsize=4)
def load_anatomy(downsample: int = 1) -> Anatomy:
    """Template anatomy, block-averaged to ``downsample`` mm voxels (cached).

    Parameters
    ----------
    downsample : int
        Integer factor from 1 (the 1 mm ATLAS grid, 197 x 233 x 189) to 8: the
        grid has ``ceil(197 / downsample) x ceil(233 / downsample) x
        ceil(189 / downsample)`` voxels of ``downsample`` mm (50 x 59 x 48 for 4).

    Returns
    -------
    Anatomy
    """
    factor = check_downsample(downsample)
    template = template_1mm()
    affine = downsampled_affine(template["affine"], factor)
    t1 = block_average(template["t1"], factor) / np.float32(255)
    gm = block_average(template["gm"], factor) / np.float32(255)
    wm = block_average(template["wm"], factor) / np.float32(255)
    brain_fraction = block_average(template["brain"], factor)
    csf = np.clip(brain_fraction - gm - wm, 0, 1)
    tissue = np.clip(gm + wm, 0, 1)
    brain = t1 > 0
    shape = t1.shape
    axes_mm = tuple(
        (affine[d, d] * np.arange(shape[d]) + affine[d, 3]).astype(np.float32)
        for d in range(3)
    )

    regions = coarse_regions()
    ventricles = _nearest_lookup(
        regions["ventricles"].astype(np.float32), regions["factor"], shape, factor
    )
    # Smoothing widths are in mm, so maps look alike on every grid.
    csf_smooth = ndimage.gaussian_filter(csf, 1.2 / factor)
    # The ventricles lie in this box: their maps need computing only there.
    near = box_from_axes(
        axes_mm, WMH_REGION_MM.mean(0), np.ptp(WMH_REGION_MM, axis=0) / 2
    )
    ventricle_smooth = np.zeros(shape, dtype=np.float32)
    ventricle_smooth[near] = ndimage.gaussian_filter(ventricles[near], 3.0 / factor)
    # Distance to the ventricles, where white-matter hypointensities go.
    ventricle_distance = np.full(shape, 1000.0, dtype=np.float32)
    ventricle_distance[near] = ndimage.distance_transform_edt(
        ventricles[near] < 0.5, sampling=factor
    )

    # Where can the deformed brain land? The brain dilated by the largest
    # displacement, computed on the coarse 2 mm grid (cheap) and looked up.
    brain_2mm = block_average(template["brain"], 2) > 0
    distance_2mm = ndimage.distance_transform_edt(~brain_2mm) * 2
    reachable = _nearest_lookup(distance_2mm <= WARP_MARGIN_MM, 2, shape, factor)
    reachable |= brain
    nonzero = np.nonzero(reachable)
    warp_box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in nonzero)
    box_shape = tuple(s.stop - s.start for s in warp_box)
    warp_index = np.ravel_multi_index(nonzero, shape)
    in_box = [ix - s.start for ix, s in zip(nonzero, warp_box, strict=True)]
    warp_index_in_box = np.ravel_multi_index(in_box, box_shape)
    warp_coords = np.stack(nonzero).astype(np.float32)

    brain_index = np.flatnonzero(brain)
    return Anatomy(
        downsample=factor,
        affine=affine,
        t1=t1,
        tissue=tissue,
        white_matter=wm,
        ventricle_distance=ventricle_distance,
        levels=dict(template["levels"]),
        axes_mm=axes_mm,
        brain_index=brain_index,
        brain_csf=csf.ravel()[brain_index],
        brain_csf_smooth=csf_smooth.ravel()[brain_index],
        brain_ventricle_smooth=ventricle_smooth.ravel()[brain_index],
        warp_box=warp_box,
        warp_index=warp_index,
        warp_index_in_box=warp_index_in_box,
        warp_coords=warp_coords,
    )
