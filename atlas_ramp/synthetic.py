"""The synthetic ATLAS-like sample: real anatomy, synthetic subjects and lesions.

The real ATLAS R2.0 data cannot be redistributed, so the kit's default data are
generated. Every synthetic subject starts from the MNI152 2009a symmetric T1
template and its grey/white matter maps, which ``nilearn`` ships inside its
package (the grid of ATLAS: 197 x 233 x 189 voxels of 1 mm). Then, in this order:

1. **Brain changes, in template space.** Atrophy (widened sulci and enlarged
   ventricles), white-matter hypointensities of vascular origin (periventricular
   caps and bands, bilateral, milder than a stroke lesion) and perivascular
   spaces (tiny elongated dark dots in the basal ganglia and the white matter).
   These are *distractors*: they are dark like lesions, and the ATLAS tracing
   protocol leaves them out of the mask.
2. **A smooth random deformation** of a few millimetres, so that no two subjects
   share the template's exact anatomy.
3. **Chronic stroke lesions, in subject space.** Each lesion is an irregular
   ellipsoid (an ellipsoid whose radius is perturbed by smooth random noise),
   restricted to brain tissue of one hemisphere. Its core is about as dark as
   cerebrospinal fluid and its border fades through a partial-volume rim. The
   mask holds the voxels where the lesion makes up more than half of the voxel,
   as a tracer would draw it.
4. **A scanner, per cohort.** Grey/white contrast and gamma, a smooth
   multiplicative bias field, a Gaussian blur for two cohorts (lower resolution
   acquisitions), Rician noise, and an intensity scale and offset.

Lesion statistics follow the ATLAS training set (Liew et al., Sci. Data 2022):
about 62% of subjects have a single lesion (the others 2-4); lesions are about
25% cortical/white matter, 60% subcortical and 15% cerebellum/brainstem, left and
right equally often; total lesion volume has a median around 5 mL and a heavy
tail up to hundreds of mL. Thresholding the image is a weak baseline on these
data: cerebrospinal fluid, perivascular spaces and lesion cores are equally dark.

Everything is deterministic: a subject depends only on ``(seed, subject index)``,
and its lesions, deformation and distractors do not depend on the ``downsample``
factor, so a subject looks the same at 1 mm and at 4 mm.

Main entry points
-----------------
:func:`build_sample`
    Write ``train/`` and ``test/`` in the ATLAS R2.0 layout (used by
    ``download_data.py``).
:func:`write_atlas_release`
    Write a small tree in the layout of the ATLAS release archive
    (``ATLAS_2/Training``, ``ATLAS_2/Testing``), for testing the archive pipeline.
:func:`make_subject`
    Generate one subject in memory.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from .bids import DataError, anat_dir, cohort_of, mask_name, subject_label, t1w_name
from .splits import stratified_holdout

__all__ = [
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "LOCATIONS",
    "Anatomy",
    "CohortProfile",
    "LesionPlan",
    "SubjectRecord",
    "SyntheticSubject",
    "build_sample",
    "downsampled_affine",
    "load_anatomy",
    "make_cohort_profiles",
    "make_subject",
    "plan_subjects",
    "sample_lesion_plan",
    "subject_seed",
    "write_atlas_release",
    "write_subject",
]

GENERATOR_NAME = "atlas_ramp.synthetic"
# Bump when a change alters the generated data, so complete samples get rebuilt.
GENERATOR_VERSION = "1.0"
COMPLETION_MARKER = ".complete"
BIDS_VERSION = "1.8.0"

#: Lesion location classes, as in the ATLAS R2.0 paper.
LOCATIONS = ("cortical", "subcortical", "cerebellum_brainstem")
#: Share of subjects whose (largest) lesion is in each class.
LOCATION_SHARES = (0.25, 0.60, 0.15)
#: Share of subjects with 1, 2, 3 and 4 lesions.
N_LESIONS_SHARES = (0.62, 0.20, 0.11, 0.07)
MAX_DOWNSAMPLE = 8

# Random streams of a subject (children of its seed sequence); separate streams
# keep, e.g., the lesions unchanged when the noise draws change with the grid.
_PLAN, _ANATOMY, _SCANNER, _LESION0 = 0, 1, 2, 10
# Top-level streams of a sample.
_SUBJECT_STREAM, _COHORT_STREAM, _LAYOUT_STREAM = 1, 2, 3

# Largest displacement of the random deformation (mm), and the margin around
# the brain where the deformed image can be non-zero.
_MAX_DISPLACEMENT_MM = 7.0
_WARP_MARGIN_MM = 10.0
# Region where white-matter hypointensities are drawn (MNI mm, min and max).
_WMH_REGION_MM = np.array([[-45.0, -65.0, -20.0], [45.0, 50.0, 50.0]])


# --------------------------------------------------------------------------
# Anatomy: the template and its tissue maps, on the chosen grid
# --------------------------------------------------------------------------


def _template_paths() -> dict:
    """Files of the template inside the nilearn package (no download)."""
    import importlib.util

    # Importing nilearn.datasets takes seconds (it imports pandas, sklearn...);
    # the files sit in its package folder, so look there first.
    spec = importlib.util.find_spec("nilearn")
    folder = Path(spec.origin).parent / "datasets" / "data" if spec else None
    names = {
        "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    }
    if folder is not None and all((folder / n).is_file() for n in names.values()):
        return {key: folder / name for key, name in names.items()}
    from nilearn.datasets import struct

    return {
        "t1": struct.MNI152_FILE_PATH,
        "gm": struct.GM_MNI152_FILE_PATH,
        "wm": struct.WM_MNI152_FILE_PATH,
    }


@functools.lru_cache(maxsize=1)
def _template_1mm() -> dict:
    """Read nilearn's MNI152 2009a symmetric template and tissue maps (1 mm)."""
    paths = _template_paths()

    def read(path):
        return np.asanyarray(nib.load(path).dataobj).astype(np.uint8)

    t1_image = nib.load(paths["t1"])
    t1 = read(paths["t1"])
    gm = read(paths["gm"])
    wm = read(paths["wm"])
    brain = t1 > 0
    csf = np.clip(1.0 - (gm / 255.0) - (wm / 255.0), 0.0, 1.0) * brain
    # Typical template intensity (0-1) of each tissue, from nearly pure voxels.
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


def _block_average(volume: np.ndarray, factor: int) -> np.ndarray:
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
def _coarse_regions() -> dict:
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
    """
    template = _template_1mm()
    factor = 2
    gm = _block_average(template["gm"], factor) / 255.0
    wm = _block_average(template["wm"], factor) / 255.0
    brain = _block_average(template["brain"], factor)
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


def _check_downsample(downsample) -> int:
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
    factor = _check_downsample(downsample)
    template = _template_1mm()
    affine = downsampled_affine(template["affine"], factor)
    t1 = _block_average(template["t1"], factor) / np.float32(255)
    gm = _block_average(template["gm"], factor) / np.float32(255)
    wm = _block_average(template["wm"], factor) / np.float32(255)
    brain_fraction = _block_average(template["brain"], factor)
    csf = np.clip(brain_fraction - gm - wm, 0, 1)
    tissue = np.clip(gm + wm, 0, 1)
    brain = t1 > 0
    shape = t1.shape
    axes_mm = tuple(
        (affine[d, d] * np.arange(shape[d]) + affine[d, 3]).astype(np.float32)
        for d in range(3)
    )

    regions = _coarse_regions()
    ventricles = _nearest_lookup(
        regions["ventricles"].astype(np.float32), regions["factor"], shape, factor
    )
    # Smoothing widths are in mm, so maps look alike on every grid.
    csf_smooth = ndimage.gaussian_filter(csf, 1.2 / factor)
    # The ventricles lie in this box: their maps need computing only there.
    near = _box_from_axes(
        axes_mm, _WMH_REGION_MM.mean(0), np.ptp(_WMH_REGION_MM, axis=0) / 2
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
    brain_2mm = _block_average(template["brain"], 2) > 0
    distance_2mm = ndimage.distance_transform_edt(~brain_2mm) * 2
    reachable = _nearest_lookup(distance_2mm <= _WARP_MARGIN_MM, 2, shape, factor)
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


# --------------------------------------------------------------------------
# Random helpers
# --------------------------------------------------------------------------


def subject_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Seed sequence of subject number ``index`` of a sample built with ``seed``.

    Each subject has its own stream, so subjects do not depend on each other.
    """
    return np.random.SeedSequence([int(seed), _SUBJECT_STREAM, int(index)])


def _as_seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(int(seed))


def _child_rng(sequence: np.random.SeedSequence, key: int) -> np.random.Generator:
    # Like SeedSequence.spawn, but pure: the same key always gives the same
    # stream, however many times it is asked for.
    child = np.random.SeedSequence(
        sequence.entropy, spawn_key=(*sequence.spawn_key, key)
    )
    return np.random.default_rng(child)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class _SmoothNoise:
    """Smooth random field: random values on a coarse grid, Gaussian-interpolated.

    The field is defined in mm. Evaluating it on any axis-aligned grid costs
    three small matrix products (the interpolation is separable), which is how
    deformation and bias fields stay cheap at 1 mm. Values have unit variance.

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


# --------------------------------------------------------------------------
# Cohorts (scanner profiles) and lesion plans
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortProfile:
    """How one cohort's scanner renders the anatomy.

    Attributes
    ----------
    name : str
        Cohort (site) name, ``R001``.
    intensity_scale : float
        White-matter intensity in the stored units.
    intensity_offset : float
        Added to every brain voxel.
    gamma : float
        Contrast curve applied to intensities normalised to white matter.
    gm_shift, csf_shift : float
        Change of the grey matter and fluid levels (template units, 0-1):
        negative values increase their contrast with white matter.
    noise : float
        Rician noise level, as a fraction of white matter.
    bias : float
        Strength of the multiplicative bias field (log scale).
    blur_fwhm_mm : float
        Gaussian blur (full width at half maximum, mm); 0 for none.
    """

    name: str = "R001"
    intensity_scale: float = 1000.0
    intensity_offset: float = 0.0
    gamma: float = 1.0
    gm_shift: float = 0.0
    csf_shift: float = 0.0
    noise: float = 0.03
    bias: float = 0.1
    blur_fwhm_mm: float = 0.0


#: Cohorts (0-based positions) whose images are blurred, as some ATLAS cohorts
#: were acquired at lower resolution.
BLURRED_COHORTS = (1, 4)


def make_cohort_profiles(n_cohorts: int, seed: int = 0) -> list[CohortProfile]:
    """Scanner profiles of cohorts ``R001`` .. ``R0NN``, reproducibly.

    Parameters
    ----------
    n_cohorts : int
        Number of cohorts.
    seed : int
        Sample seed.

    Returns
    -------
    list of CohortProfile
        Cohorts ``BLURRED_COHORTS`` (R002 and R005) get a 1.2-2 mm blur.
    """
    rng = np.random.default_rng([int(seed), _COHORT_STREAM])
    profiles = []
    for position in range(n_cohorts):
        draws = rng.uniform(size=8)
        blur = 1.2 + 0.8 * draws[7] if position in BLURRED_COHORTS else 0.0
        profiles.append(
            CohortProfile(
                name=f"R{position + 1:03d}",
                intensity_scale=round(float(np.exp(np.log(300) + draws[0] * 2.3)), 1),
                intensity_offset=round(float(40 * draws[1]), 1),
                gamma=round(float(0.8 + 0.45 * draws[2]), 3),
                gm_shift=round(float(-0.06 + 0.1 * draws[3]), 3),
                csf_shift=round(float(-0.04 + 0.1 * draws[4]), 3),
                noise=round(float(0.015 + 0.03 * draws[5]), 4),
                bias=round(float(0.04 + 0.14 * draws[6]), 3),
                blur_fwhm_mm=round(float(blur), 2),
            )
        )
    return profiles


@dataclass(frozen=True)
class LesionPlan:
    """What a lesion should be, before it is drawn.

    Attributes
    ----------
    location : str
        One of :data:`LOCATIONS`.
    hemisphere : str
        ``left`` or ``right``.
    volume_ml : float
        Target volume; the drawn lesion comes close (see
        :attr:`SyntheticSubject.info` for the actual one).
    """

    location: str
    hemisphere: str
    volume_ml: float


# Log-normal lesion volumes (median mL, sigma of log, min mL, max mL).
_PRIMARY_VOLUME = {
    "cortical": (30.0, 1.1, 0.3, 450.0),
    "subcortical": (2.2, 1.2, 0.01, 120.0),
    "cerebellum_brainstem": (3.0, 1.1, 0.02, 80.0),
}
_SECONDARY_VOLUME = (0.8, 1.3, 0.01)


def sample_lesion_plan(rng: np.random.Generator) -> list[LesionPlan]:
    """Draw the lesions of one subject: how many, where, how large.

    The first lesion is the largest; its location class follows
    :data:`LOCATION_SHARES`. Further lesions are smaller, in a class drawn from
    the same shares, in the same hemisphere two times out of three.

    Parameters
    ----------
    rng : numpy.random.Generator

    Returns
    -------
    list of LesionPlan
        One to four lesions, largest first.
    """
    n_lesions = 1 + int(rng.choice(len(N_LESIONS_SHARES), p=N_LESIONS_SHARES))
    side = "left" if rng.uniform() < 0.5 else "right"
    location = LOCATIONS[rng.choice(len(LOCATIONS), p=LOCATION_SHARES)]
    median, sigma, low, high = _PRIMARY_VOLUME[location]
    volume = float(np.clip(median * np.exp(sigma * rng.standard_normal()), low, high))
    plans = [LesionPlan(location, side, volume)]
    for _ in range(n_lesions - 1):
        other_location = LOCATIONS[rng.choice(len(LOCATIONS), p=LOCATION_SHARES)]
        same_side = rng.uniform() < 2 / 3
        other_side = side if same_side else ("right" if side == "left" else "left")
        median, sigma, low = _SECONDARY_VOLUME
        other_volume = median * np.exp(sigma * rng.standard_normal())
        other_volume = float(np.clip(other_volume, low, 0.7 * volume))
        plans.append(LesionPlan(other_location, other_side, other_volume))
    return plans


# --------------------------------------------------------------------------
# One subject
# --------------------------------------------------------------------------


@dataclass
class SyntheticSubject:
    """A generated subject.

    Attributes
    ----------
    t1 : ndarray of float32
        T1-weighted image in the cohort's units (whole numbers; 0 outside the
        brain), shape ``anatomy.shape``.
    mask : ndarray of uint8
        Lesion mask, 0/1.
    affine : ndarray of shape (4, 4)
    info : dict
        ``n_lesions`` (connected components of the mask, 6-connectivity),
        ``hemisphere`` (``left``/``right``/``bilateral``), ``location`` (class
        of the largest lesion), ``lesion_volume_ml`` (from the mask),
        ``days_post_stroke``, ``lesions`` (one dict per drawn lesion) and
        ``distractors`` (atrophy, white-matter hypointensity severity, number of
        perivascular spaces).
    """

    t1: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    info: dict


def _grid_mm(anatomy: Anatomy, box) -> tuple:
    return tuple(anatomy.axes_mm[d][box[d]] for d in range(3))


def _box_around(anatomy: Anatomy, centre_mm, half_mm) -> tuple:
    """Index box (slices) covering ``centre +- half`` mm, clipped to the grid."""
    return _box_from_axes(anatomy.axes_mm, centre_mm, half_mm)


def _box_from_axes(axes_mm, centre_mm, half_mm) -> tuple:
    slices = []
    for d in range(3):
        axis = axes_mm[d]
        start = np.searchsorted(axis, centre_mm[d] - half_mm[d], side="left")
        stop = np.searchsorted(axis, centre_mm[d] + half_mm[d], side="right")
        start = max(int(start) - 1, 0)
        stop = min(int(stop) + 1, len(axis))
        slices.append(slice(start, max(stop, start + 1)))
    return tuple(slices)


def _ellipsoid_radius(grid_mm, centre_mm, axes_mm, rotation) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) on a grid box.

    Written as a quadratic form of broadcast 1D coordinates, so that only two
    operations touch the full box.
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


def _rim_width(anatomy: Anatomy, rim_mm: float) -> float:
    # A coarse voxel averages over its width: the transition is at least that.
    return float(np.hypot(rim_mm, 0.6 * anatomy.downsample))


def _add_atrophy(anatomy, image, tissue, sulcal: float, ventricular: float):
    """Widen sulci and enlarge ventricles: brain tissue next to fluid becomes fluid.

    Parameters are 0 (none) to 1 (severe); arrays are modified in place.
    """
    csf = anatomy.brain_csf
    widened = np.clip((anatomy.brain_csf_smooth - (0.5 - 0.4 * sulcal)) / 0.15, 0, 1)
    enlarged = np.clip(
        (anatomy.brain_ventricle_smooth - (0.5 - 0.45 * ventricular)) / 0.1, 0, 1
    )
    new_csf = np.maximum(np.maximum(widened, enlarged), csf)
    # Share of the remaining tissue that turns into fluid.
    converted = np.clip((new_csf - csf) / np.maximum(1 - csf, 1e-3), 0, 1)
    index = anatomy.brain_index
    flat_image, flat_tissue = image.reshape(-1), tissue.reshape(-1)
    values = flat_image[index]
    flat_image[index] = values + converted * (anatomy.levels["csf"] - values)
    flat_tissue[index] = flat_tissue[index] * (1 - converted)


def _add_blob(anatomy, image, tissue, centre_mm, axes_mm, rotation, level, peak):
    """Draw a small dark ellipsoid (perivascular space, punctate hypointensity)."""
    half = np.full(3, max(axes_mm) + 2.0 * anatomy.downsample)
    box = _box_around(anatomy, centre_mm, half)
    radius = _ellipsoid_radius(_grid_mm(anatomy, box), centre_mm, axes_mm, rotation)
    width = _rim_width(anatomy, 0.5)
    fraction = np.clip(0.5 + (1 - radius) * min(axes_mm) / width, 0, 1) * peak
    fraction *= np.clip(tissue[box], 0, 1)  # only where there is tissue
    image[box] += fraction * (level - image[box])
    if level < anatomy.levels["gm"]:  # fluid-filled: less tissue for lesions
        tissue[box] *= 1 - 0.5 * fraction


def _add_white_matter_hypointensities(anatomy, image, tissue, rng, severity):
    """Periventricular caps and bands plus punctate lesions, both hemispheres.

    On T1 they are milder than a chronic stroke (between grey and white matter)
    and they are not traced.
    """
    levels = anatomy.levels
    depth = (levels["wm"] - levels["gm"]) * rng.uniform(0.5, 1.0)
    pattern = _SmoothNoise(rng, *_WMH_REGION_MM, spacing=5.0)
    n_punctate = rng.poisson(10 * severity**1.5)
    punctate = [
        (rng.integers(1 << 30), rng.uniform(1.0, 2.5, size=3), rng.uniform(0.5, 1))
        for _ in range(n_punctate)
    ]
    if severity > 0.05:
        box = _box_around(
            anatomy, _WMH_REGION_MM.mean(0), np.ptp(_WMH_REGION_MM, axis=0) / 2
        )
        grid = _grid_mm(anatomy, box)
        noise = pattern.on_grid(*grid)
        # A band along the ventricles, thicker with severity and at the
        # frontal and occipital horns (the "caps"), irregular, off the midline.
        y = grid[1][None, :, None]
        caps = 1 + 0.7 / (1 + np.exp((5 - y) / 4)) + 0.7 / (1 + np.exp((y + 30) / 4))
        thickness = (1.5 + 5.0 * severity) * caps
        band = np.exp(-anatomy.ventricle_distance[box] / thickness) * (1 + 0.6 * noise)
        weight = np.clip((band - 0.4) / 0.3, 0, 1)
        weight *= anatomy.white_matter[box]
        weight *= np.clip((np.abs(grid[0]) - 4) / 4, 0, 1)[:, None, None]
        image[box] -= depth * weight * (image[box] > 0)
    candidates = _coarse_regions()["points"][("deep_white_matter", "any")]
    level = levels["wm"] - depth
    for pick, axes, peak in punctate:
        centre = candidates[pick % len(candidates)]
        _add_blob(anatomy, image, tissue, centre, axes, np.eye(3), level, peak)


def _add_perivascular_spaces(anatomy, image, tissue, rng, count):
    """Tiny elongated fluid-filled spaces along vessels (basal ganglia, WM)."""
    points = _coarse_regions()["points"]
    ganglia, white = (
        points[("basal_ganglia", "any")],
        points[("deep_white_matter", "any")],
    )
    level = anatomy.levels["csf"]
    for _ in range(count):
        in_ganglia = rng.uniform() < 0.6
        candidates = ganglia if in_ganglia else white
        centre = candidates[rng.integers(len(candidates))] + rng.uniform(-1, 1, 3)
        width = rng.uniform(0.8, 1.5)
        axes = (width, width, rng.uniform(2.0, 6.0))
        if in_ganglia:  # lenticulostriate arteries run upwards
            tilt = rng.normal(0, 0.25, size=2)
            rotation = _random_rotation_about_axis(tilt)
        else:
            rotation = _random_rotation(rng)
        peak = rng.uniform(0.6, 1.0)
        _add_blob(anatomy, image, tissue, centre, axes, rotation, level, peak)


def _random_rotation_about_axis(tilt) -> np.ndarray:
    """Rotation tilting the z axis by small angles (radians) about x and y."""
    cx, sx = np.cos(tilt[0]), np.sin(tilt[0])
    cy, sy = np.cos(tilt[1]), np.sin(tilt[1])
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return about_y @ about_x


def _draw_displacement(anatomy: Anatomy, rng) -> list[np.ndarray]:
    """Smooth random displacement (mm) on the warp box, one array per axis."""
    template = _template_1mm()
    shape_1mm = np.array(template["t1"].shape)
    lower = template["affine"][:3, 3]
    upper = lower + shape_1mm - 1
    amplitude = rng.uniform(1.2, 2.5)
    fields = [_SmoothNoise(rng, lower, upper, spacing=20.0) for _ in range(3)]
    grid = _grid_mm(anatomy, anatomy.warp_box)
    limit = _MAX_DISPLACEMENT_MM
    return [
        np.clip(
            f.on_grid(*grid) * np.float32(amplitude), -limit, limit, dtype=np.float32
        )
        for f in fields
    ]


def _trilinear(volumes, coords) -> list[np.ndarray]:
    """Sample volumes at fractional voxel coordinates ``(3, n)``, edges clamped.

    Faster than ``scipy.ndimage.map_coordinates(order=1)`` for millions of
    points, and the weights are shared by all volumes.
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


def _warp(anatomy: Anatomy, displacement, volumes) -> list[np.ndarray]:
    """Deform template-space volumes: ``out(x) = volume(x + displacement(x))``."""
    coords = anatomy.warp_coords.copy()
    for axis in range(3):
        shift = displacement[axis].reshape(-1)[anatomy.warp_index_in_box]
        coords[axis] += shift / anatomy.downsample
    warped = []
    for values in _trilinear(volumes, coords):
        out = np.zeros(anatomy.shape, dtype=np.float32)
        out.reshape(-1)[anatomy.warp_index] = values
        warped.append(out)
    return warped


def _source_coords(anatomy: Anatomy, box, displacement) -> np.ndarray:
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


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities of a 3D mask (faster than ndimage.binary_fill_holes).

    Background pieces that do not reach the border of the box are holes.
    """
    background, _ = ndimage.label(~mask)
    faces = [background[0], background[-1], background[:, 0], background[:, -1]]
    faces += [background[:, :, 0], background[:, :, -1]]
    outside = np.unique(np.concatenate([face.ravel() for face in faces]))
    return mask | ~np.isin(background, outside)


def _draw_lesion(anatomy, plan, rng, image, tissue, mask, displacement, last_try):
    """Draw one lesion into ``image`` and ``mask`` (subject space).

    ``image`` and ``mask`` are in subject space, ``tissue`` (where lesions can
    be) in template space. Returns the lesion's info dict, or None when it
    touched an earlier lesion (the caller tries another place) unless
    ``last_try``.
    """
    levels = anatomy.levels
    side = -1.0 if plan.hemisphere == "left" else 1.0
    candidates = _coarse_regions()["points"][(plan.location, plan.hemisphere)]
    point = candidates[rng.integers(len(candidates))] + rng.uniform(-1, 1, size=3)

    # Shape: an ellipsoid whose radius is perturbed by smooth noise.
    if plan.location == "subcortical":
        aspect = np.array([1.0, rng.uniform(0.45, 0.8), rng.uniform(0.4, 0.75)])
        roughness = rng.uniform(0.15, 0.3)
    elif plan.location == "cortical":
        aspect = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.9)])
        roughness = rng.uniform(0.3, 0.45)
    else:
        aspect = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.9)])
        roughness = rng.uniform(0.15, 0.3)
    rotation = _random_rotation(rng)
    rim_mm = rng.uniform(1.0, 2.5)
    # Core about as dark as fluid (cavitation), or a little brighter (gliosis).
    core = levels["csf"] * rng.uniform(0.9, 1.6)
    # Target volume: at least one voxel on coarse grids.
    target_voxels = max(plan.volume_ml / anatomy.voxel_volume_ml, 1.0)
    radius_mm = (3 * plan.volume_ml * 1000 / (4 * np.pi) / 0.8) ** (1 / 3)
    axes = radius_mm * aspect / np.prod(aspect) ** (1 / 3)
    if plan.location == "cortical" and radius_mm > 8:
        # Large territorial lesions: centre under the cortex so the lesion
        # spans white matter and reaches the surface (wedge-like).
        inward = np.array([side * 26.0, -16.0, 14.0]) - point
        point = point + 0.35 * radius_mm * inward / np.linalg.norm(inward)

    max_scale = 1.5
    half_mm = axes.max() * max_scale * (1 + 2.5 * roughness + 0.2) + rim_mm
    big_noise = _SmoothNoise(
        rng, point - half_mm, point + half_mm, spacing=max(0.45 * axes.mean(), 2.0)
    )
    fine_noise = _SmoothNoise(
        rng, point - half_mm, point + half_mm, spacing=max(0.25 * axes.mean(), 2.0)
    )

    # The anatomy moved: find where the template point landed in this subject.
    index = anatomy.index_of(point)
    box_index = [int(index[d]) - anatomy.warp_box[d].start for d in range(3)]
    box_shape = displacement[0].shape
    if all(0 <= box_index[d] < box_shape[d] for d in range(3)):
        shift = np.array([displacement[d][tuple(box_index)] for d in range(3)])
    else:
        shift = np.zeros(3)
    centre = point - shift

    box = _box_around(anatomy, centre, np.full(3, half_mm + anatomy.downsample))
    # Lesions are inside the brain, hence inside the warp box.
    box = tuple(
        slice(
            max(b.start, w.start), max(min(b.stop, w.stop), max(b.start, w.start) + 1)
        )
        for b, w in zip(box, anatomy.warp_box, strict=True)
    )
    grid = _grid_mm(anatomy, box)
    radius0 = _ellipsoid_radius(grid, centre, axes, rotation)
    fine = fine_noise.on_grid(*grid)
    perturbation = roughness * big_noise.on_grid(*grid) + 0.08 * fine
    # Lesions only replace brain tissue (not fluid) of the deformed anatomy.
    source = _source_coords(anatomy, box, displacement)
    tissue_here = _trilinear([tissue], source)[0].reshape(radius0.shape)
    allowed = np.clip((tissue_here - 0.2) / 0.6, 0, 1)
    if plan.location != "cerebellum_brainstem":
        # One hemisphere of the template (x < 0 is left).
        source_x = anatomy.axes_mm[0][0] + source[0] * anatomy.downsample
        hemisphere = np.clip(0.5 + side * source_x / 1.5, 0, 1)
        allowed *= hemisphere.reshape(radius0.shape)
    width = _rim_width(anatomy, rim_mm)
    mean_axis = float(axes.mean())

    def lesion_fraction(scale):
        radius = radius0 / np.float32(scale) + perturbation
        signed_mm = (1 - radius) * (mean_axis * scale)
        return np.clip(0.5 + signed_mm / width, 0, 1) * allowed

    # Grow or shrink the lesion until its mask has the target volume.
    scale, low, high = 1.0, None, None
    for _ in range(10):
        fraction = lesion_fraction(scale)
        count = int(np.count_nonzero(fraction > 0.5))
        if abs(count - target_voxels) <= max(0.04 * target_voxels, 0.5):
            break
        if count < target_voxels:
            low = scale
        else:
            high = scale
        if low is not None and high is not None:
            scale = float(np.sqrt(low * high))
        else:
            step = (target_voxels / max(count, 0.3)) ** (1 / 3)
            scale = float(np.clip(scale * np.clip(step, 0.6, 1.6), 0.2, max_scale))
            if scale == low:  # cannot grow further
                break

    lesion = fraction > 0.5
    if lesion.any():
        # Keep one connected piece; other pieces stay as faint partial volume.
        labels, n_pieces = ndimage.label(lesion)
        if n_pieces > 1:
            sizes = np.bincount(labels.ravel())[1:]
            main = labels == 1 + int(np.argmax(sizes))
            np.minimum(fraction, 0.45, out=fraction, where=lesion & ~main)
            lesion = main
        # A tracer outlines the lesion: fluid pockets inside it belong to it.
        filled = _fill_holes(lesion)
        np.maximum(fraction, 0.75, out=fraction, where=filled & ~lesion)
        lesion = filled
    else:
        # Tiny lesion on a coarse grid: keep its most lesioned tissue voxel.
        score = np.where(allowed >= 0.5, fraction + 1e-3, 0) + 1e-6 * allowed
        peak = np.unravel_index(int(np.argmax(score)), fraction.shape)
        fraction[peak] = 1.0
        lesion = fraction > 0.5

    existing = mask[box].astype(bool)
    touching = existing.any() and (ndimage.binary_dilation(existing) & lesion).any()
    if touching and not last_try:
        return None

    texture = core * (1 + 0.08 * fine)
    image[box] += fraction * (texture - image[box])
    mask[box] |= lesion.astype(np.uint8)
    centroid = [float(np.mean(grid[d][np.nonzero(lesion)[d]])) for d in range(3)]
    return {
        "location": plan.location,
        "hemisphere": plan.hemisphere,
        "target_volume_ml": round(plan.volume_ml, 4),
        "volume_ml": round(int(lesion.sum()) * anatomy.voxel_volume_ml, 4),
        "centre_mm": [round(c, 1) for c in centroid],
        "box": box,
    }


def _apply_scanner(anatomy, profile: CohortProfile, image, rng) -> np.ndarray:
    """Cohort contrast, bias field, blur, Rician noise, scale and offset."""
    levels = anatomy.levels
    wm = levels["wm"]
    # Piecewise-linear contrast through the tissue levels, then a gamma curve,
    # tabulated once (one np.interp over the brain instead of a power).
    anchors_in = [0.0, levels["csf"], levels["gm"], wm, 1.0, 2.0]
    anchors_out = [
        0.0,
        levels["csf"] + profile.csf_shift,
        levels["gm"] + profile.gm_shift,
        wm,
        1.0,
        2.0,
    ]
    table_step = 1 / 1024
    table_in = np.arange(0, 2 + 2 * table_step, table_step)
    table = (np.interp(table_in, anchors_in, anchors_out) / wm) ** profile.gamma
    table = table.astype(np.float32)
    bias_field = _SmoothNoise(rng, [-100, -140, -80], [100, 100, 90], spacing=45.0)
    box = anatomy.warp_box
    flat = image.reshape(-1)
    values = flat[anatomy.warp_index]
    inside = values > 0  # the deformed brain
    values = values[inside]
    index = anatomy.warp_index[inside]
    position = np.clip(values, 0, 2) * np.float32(1 / table_step)
    entry = position.astype(np.int32)
    values = table[entry] + (position - entry) * (table[entry + 1] - table[entry])
    bias = bias_field.on_grid(*_grid_mm(anatomy, box)).reshape(-1)
    bias = bias[anatomy.warp_index_in_box[inside]]
    values *= np.exp(np.float32(profile.bias) * bias)
    if profile.blur_fwhm_mm > 0:
        flat[index] = values
        sigma = profile.blur_fwhm_mm / 2.3548 / anatomy.downsample
        image[box] = ndimage.gaussian_filter(image[box], sigma, truncate=3.0)
        values = flat[index]
    noise_real = rng.standard_normal(values.size, dtype=np.float32)
    noise_imaginary = rng.standard_normal(values.size, dtype=np.float32)
    # Rician: the magnitude of a complex signal with Gaussian noise on both parts
    # (np.hypot is several times slower than this).
    noise_real *= np.float32(profile.noise)
    noise_imaginary *= np.float32(profile.noise)
    values += noise_real
    values = np.sqrt(values * values + noise_imaginary * noise_imaginary)
    values *= np.float32(profile.intensity_scale)
    values += np.float32(profile.intensity_offset)
    t1 = np.zeros(anatomy.shape, dtype=np.float32)
    t1.reshape(-1)[index] = np.maximum(np.rint(values), 1)
    return t1


def make_subject(
    seed,
    cohort_profile: CohortProfile | None = None,
    anatomy: Anatomy | None = None,
    *,
    downsample: int = 1,
) -> SyntheticSubject:
    """Generate one synthetic subject in memory.

    Parameters
    ----------
    seed : int or numpy.random.SeedSequence
        The subject's seed; :func:`subject_seed` gives the one a sample uses.
        Lesions, deformation and distractors depend only on it (not on the
        grid or the cohort).
    cohort_profile : CohortProfile, optional
        Scanner of the subject's cohort; a neutral default if None.
    anatomy : Anatomy, optional
        Template anatomy; ``load_anatomy(downsample)`` if None.
    downsample : int
        Grid (1 mm ... 8 mm voxels), used when ``anatomy`` is None.

    Returns
    -------
    SyntheticSubject

    Examples
    --------
    >>> subject = make_subject(0, downsample=4)
    >>> subject.t1.shape, int(subject.mask.max())
    ((50, 59, 48), 1)
    """
    anatomy = load_anatomy(downsample) if anatomy is None else anatomy
    profile = CohortProfile() if cohort_profile is None else cohort_profile
    with _one_blas_thread():
        return _make_subject(_as_seed_sequence(seed), profile, anatomy)


def _one_blas_thread():
    """Limit BLAS to one thread: its matrices here are small, and threads
    fighting over them made generation several times slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with sklearn
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _make_subject(sequence, profile, anatomy) -> SyntheticSubject:
    plan_rng = _child_rng(sequence, _PLAN)
    anatomy_rng = _child_rng(sequence, _ANATOMY)

    lesion_plans = sample_lesion_plan(plan_rng)
    days_post_stroke = int(np.clip(np.exp(plan_rng.normal(np.log(450), 0.9)), 60, 7000))
    atrophy = float(plan_rng.beta(2.0, 3.0))
    ventricular = float(np.clip(atrophy * plan_rng.uniform(0.6, 1.5), 0, 1))
    wmh_severity = float(plan_rng.beta(1.3, 3.0))
    n_perivascular = int(plan_rng.integers(8, 50))

    # 1. Template space: atrophy, white-matter hypointensities, perivascular spaces.
    image = anatomy.t1.copy()
    tissue = anatomy.tissue.copy()
    _add_atrophy(anatomy, image, tissue, atrophy, ventricular)
    _add_white_matter_hypointensities(anatomy, image, tissue, anatomy_rng, wmh_severity)
    _add_perivascular_spaces(anatomy, image, tissue, anatomy_rng, n_perivascular)

    # 2. A smooth random deformation.
    displacement = _draw_displacement(anatomy, anatomy_rng)
    (image,) = _warp(anatomy, displacement, [image])

    # 3. Lesions, in subject space.
    mask = np.zeros(anatomy.shape, dtype=np.uint8)
    lesions, boxes = [], []
    for number, plan in enumerate(lesion_plans):
        lesion_rng = _child_rng(sequence, _LESION0 + number)
        n_tries = 8  # another place when it touches an earlier lesion
        for attempt in range(n_tries):
            drawn = _draw_lesion(
                anatomy,
                plan,
                lesion_rng,
                image,
                tissue,
                mask,
                displacement,
                last_try=attempt == n_tries - 1,
            )
            if drawn is not None:
                lesions.append(drawn)
                boxes.append(drawn.pop("box"))
                break

    # 4. The cohort's scanner.
    t1 = _apply_scanner(anatomy, profile, image, _child_rng(sequence, _SCANNER))

    lesion_box = tuple(
        slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes))
        for d in range(3)
    )
    _, n_components = ndimage.label(mask[lesion_box])
    largest = max(lesions, key=lambda lesion: lesion["volume_ml"])
    sides = {lesion["hemisphere"] for lesion in lesions}
    info = {
        "n_lesions": int(n_components),
        "hemisphere": sides.pop() if len(sides) == 1 else "bilateral",
        "location": largest["location"],
        "lesion_volume_ml": round(int(mask.sum()) * anatomy.voxel_volume_ml, 4),
        "days_post_stroke": days_post_stroke,
        "lesions": lesions,
        "distractors": {
            "atrophy": round(atrophy, 3),
            "ventricular_enlargement": round(ventricular, 3),
            "white_matter_hypointensity": round(wmh_severity, 3),
            "perivascular_spaces": n_perivascular,
        },
    }
    return SyntheticSubject(t1=t1, mask=mask, affine=anatomy.affine.copy(), info=info)


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

#: gzip level of the NIfTI files: level 1 is several times faster than 9 and
#: the files are barely larger (noise does not compress).
GZIP_LEVEL = 1
SPLITS = ("train", "test")


def _nifti_gz_bytes(array: np.ndarray, affine: np.ndarray, dtype) -> bytes:
    """A gzip-compressed NIfTI-1 file, byte-identical for identical arrays."""
    image = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    image.set_qform(affine, code="mni")
    image.set_sform(affine, code="mni")
    header = image.header
    header.set_data_dtype(dtype)
    header.set_xyzt_units("mm")
    header.set_slope_inter(1.0, 0.0)
    header["descrip"] = b"atlas_ramp synthetic ATLAS-like sample"
    # mtime=0: no time stamp in the gzip header, so reruns give the same bytes.
    return gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


def _write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name beside ``path``, then rename it."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_subject(
    split_dir: Path | str, subject_id: str, subject: SyntheticSubject, with_mask=True
) -> Path:
    """Write a subject's T1w image (and mask) under ``split_dir`` in ATLAS names.

    Files go to ``<split_dir>/R001/sub-r001s001/ses-1/anat/``; each one is
    written under a temporary name and renamed, so a final name never holds a
    half-written file.

    Parameters
    ----------
    split_dir : path
        ``data/train``, ``ATLAS_2/Training``...
    subject_id : str
        ``sub-r001s001`` (or ``r001s001``).
    subject : SyntheticSubject
    with_mask : bool
        False for unlabelled subjects (ATLAS Testing).

    Returns
    -------
    Path
        The subject's ``anat`` folder.
    """
    folder = anat_dir(split_dir, subject_id)
    folder.mkdir(parents=True, exist_ok=True)
    # Whole numbers in the cohort's units: int16 without scaling is exact.
    t1 = np.clip(subject.t1, 0, np.iinfo(np.int16).max)
    _write_bytes_atomically(
        folder / t1w_name(subject_id), _nifti_gz_bytes(t1, subject.affine, np.int16)
    )
    if with_mask:
        _write_bytes_atomically(
            folder / mask_name(subject_id),
            _nifti_gz_bytes(subject.mask, subject.affine, np.uint8),
        )
    return folder


def _write_json_atomically(path: Path, content: dict) -> None:
    text = json.dumps(content, indent=2, sort_keys=False) + "\n"
    _write_bytes_atomically(path, text.encode())


PARTICIPANT_COLUMNS = (
    "participant_id",
    "cohort",
    "n_lesions",
    "hemisphere",
    "location",
    "lesion_volume_ml",
    "days_post_stroke",
)


def _write_participants(path: Path, rows: list[dict]) -> None:
    lines = ["\t".join(PARTICIPANT_COLUMNS)]
    for row in sorted(rows, key=lambda row: row["participant_id"]):
        values = dict(row, lesion_volume_ml=f"{row['lesion_volume_ml']:.3f}")
        lines.append("\t".join(str(values[column]) for column in PARTICIPANT_COLUMNS))
    _write_bytes_atomically(path, ("\n".join(lines) + "\n").encode())


def _dataset_description(split: str, parameters: dict) -> dict:
    return {
        "Name": f"Synthetic ATLAS-like stroke lesion sample ({split})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": GENERATOR_NAME,
                "Version": GENERATOR_VERSION,
                "Seed": parameters["seed"],
                "Downsample": parameters["downsample"],
                "Description": (
                    "Synthetic subjects on the MNI152 2009a symmetric template "
                    "(T1 and tissue maps shipped with nilearn): random deformation, "
                    "atrophy, white-matter hypointensities, perivascular spaces, "
                    "chronic stroke lesions, per-cohort scanner profiles."
                ),
            }
        ],
        "SourceDatasets": [
            {
                "Description": "MNI ICBM152 2009a nonlinear symmetric template "
                "(as distributed with nilearn)",
                "URL": "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009",
            }
        ],
        "Notes": (
            "SYNTHETIC DATA, not images of real patients. Names and layout follow "
            "ATLAS R2.0 (space-MNI152NLin2009aSym, label-L_desc-T1lesion masks) so "
            "that code written for ATLAS runs unchanged. Grid: "
            f"{parameters['downsample']} mm voxels. Lesion volumes in "
            "participants.tsv are measured on the masks."
        ),
    }


# --------------------------------------------------------------------------
# A whole sample
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectRecord:
    """Who a subject of a sample is: ID, cohort, generation index and split."""

    subject_id: str
    cohort: str
    index: int
    split: str


def _cohort_sizes(n_total: int, n_cohorts: int, rng) -> np.ndarray:
    """Unequal cohort sizes adding up to ``n_total``, at least 2 each if possible."""
    minimum = 2 if n_total >= 2 * n_cohorts else 1
    weights = rng.gamma(1.5, size=n_cohorts) + 0.3
    extra = rng.multinomial(n_total - minimum * n_cohorts, weights / weights.sum())
    return minimum + extra


def plan_subjects(
    n_train: int, n_test: int, n_cohorts: int, seed: int = 0
) -> list[SubjectRecord]:
    """Subjects of a sample: IDs, cohorts and a cohort-stratified train/test split.

    ``n_train + n_test`` subjects are spread over cohorts of unequal sizes, then
    split with :func:`atlas_ramp.splits.stratified_holdout`; when its rounding
    misses ``n_test`` by a few subjects, they are moved between the sides from
    the cohorts that have the most, so the counts are exact.

    Returns
    -------
    list of SubjectRecord
        In generation order (cohort by cohort); ``index`` is the subject's
        number in :func:`subject_seed`.
    """
    n_total = n_train + n_test
    if n_train < 1 or n_test < 0:
        raise ValueError(f"Need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}.")
    if not 1 <= n_cohorts <= n_total:
        raise ValueError(
            f"n_cohorts must be between 1 and the number of subjects ({n_total}), "
            f"got {n_cohorts}."
        )
    if n_cohorts > 999:
        raise ValueError("ATLAS names allow at most 999 cohorts.")
    rng = np.random.default_rng([int(seed), _LAYOUT_STREAM])
    sizes = _cohort_sizes(n_total, n_cohorts, rng)
    ids, cohorts = [], []
    for cohort_number, size in enumerate(sizes, start=1):
        for subject_number in range(1, size + 1):
            ids.append("sub-" + subject_label(cohort_number, subject_number))
            cohorts.append(cohort_of(ids[-1]))
    test = set()
    if n_test > 0:
        _, held_out = stratified_holdout(ids, cohorts, n_test / n_total, seed=seed)
        test = set(held_out)
    cohort_of_id = dict(zip(ids, cohorts, strict=True))
    while len(test) != n_test:
        moving_to_test = len(test) < n_test
        pool = [s for s in ids if (s in test) != moving_to_test]
        counts = {}
        for subject in pool:
            counts[cohort_of_id[subject]] = counts.get(cohort_of_id[subject], 0) + 1
        fullest = max(sorted(counts), key=counts.get)
        candidates = [s for s in pool if cohort_of_id[s] == fullest]
        chosen = candidates[int(rng.integers(len(candidates)))]
        if moving_to_test:
            test.add(chosen)
        else:
            test.remove(chosen)
    return [
        SubjectRecord(s, c, index, "test" if s in test else "train")
        for index, (s, c) in enumerate(zip(ids, cohorts, strict=True))
    ]


def _generate_one(task) -> dict:
    """Generate and write one subject; returns its participants.tsv row."""
    record, profile, seed, downsample, split_dir = task
    subject = make_subject(
        subject_seed(seed, record.index), profile, load_anatomy(downsample)
    )
    write_subject(split_dir, record.subject_id, subject)
    info = subject.info
    return {
        "participant_id": record.subject_id,
        "cohort": record.cohort,
        "n_lesions": info["n_lesions"],
        "hemisphere": info["hemisphere"],
        "location": info["location"],
        "lesion_volume_ml": info["lesion_volume_ml"],
        "days_post_stroke": info["days_post_stroke"],
        "split": record.split,
    }


def _default_jobs(n_subjects: int, downsample: int) -> int:
    # Worth a second process only for full-size volumes.
    if n_subjects < 8 or downsample > 2:
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def _read_marker(output_dir: Path) -> dict | None:
    try:
        return json.loads((output_dir / COMPLETION_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _count_images(split_dir: Path) -> int:
    return sum(
        1
        for path in split_dir.glob("R*/sub-*/ses-*/anat/*_T1w.nii.gz")
        if not path.name.startswith(".")
    )


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _remove_leftovers(output_dir: Path) -> None:
    """Remove temporary folders that an interrupted run left behind."""
    for split in SPLITS:
        for pattern in (f".{split}.partial-*", f".{split}.old-*"):
            for leftover in output_dir.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)


def build_sample(
    output_dir,
    n_train: int = 40,
    n_test: int = 16,
    n_cohorts: int = 6,
    seed: int = 0,
    downsample: int = 1,
    force: bool = False,
    progress: bool = True,
    n_jobs: int | None = None,
) -> Path:
    """Build the synthetic ATLAS-like sample in ``output_dir/train`` and ``/test``.

    Layout and names are those of ATLAS R2.0::

        <output_dir>/train/R001/sub-r001s001/ses-1/anat/
            sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
            sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

    plus ``dataset_description.json`` and ``participants.tsv`` in each split.
    ``test`` is a cohort-stratified hold-out of exactly ``n_test`` subjects.

    The build is safe to interrupt: each split is generated in a hidden
    temporary folder (``.train.partial-*``) and renamed into place only when both
    splits are complete, and a completion marker (``.complete``) is written
    last. Until then, the previous data stay untouched. When the marker shows a
    complete sample built with the same parameters, nothing is done.

    Parameters
    ----------
    output_dir : path
        Data folder (``data``).
    n_train, n_test : int
        Number of training and test subjects.
    n_cohorts : int
        Number of cohorts (sites), ``R001`` ... Cohorts have unequal sizes and
        their own scanner profile.
    seed : int
        Same seed, same data (byte for byte).
    downsample : int
        Voxel size in mm, 1 (the ATLAS grid, default) to 8. Tests use 4.
    force : bool
        Rebuild even if a complete sample is there, and replace data that
        this generator did not write.
    progress : bool
        Show a progress bar.
    n_jobs : int, optional
        Worker processes; by default 2 (if the machine has them) for
        full-size volumes, else 1. Results do not depend on it.

    Returns
    -------
    Path
        ``output_dir``.

    Raises
    ------
    DataError
        ``output_dir`` holds data this generator did not write (for example
        the real ATLAS data) and ``force`` is False.
    """
    downsample = _check_downsample(downsample)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    output_dir = Path(output_dir)
    parameters = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "n_cohorts": int(n_cohorts),
        "seed": int(seed),
        "downsample": downsample,
    }
    records = plan_subjects(n_train, n_test, n_cohorts, seed)  # checks the counts
    described = (
        f"{n_train} train + {n_test} test subjects, {n_cohorts} cohorts, "
        f"seed {seed}, {downsample} mm"
    )

    marker = _read_marker(output_dir)
    ours = isinstance(marker, dict) and marker.get("generator") == GENERATOR_NAME
    if ours and marker == parameters and not force:
        counts_ok = _count_images(output_dir / "train") == n_train and (
            _count_images(output_dir / "test") == n_test
        )
        if counts_ok:
            print(
                f"Synthetic sample in {output_dir} is complete ({described}); "
                "skipping. Use --force to rebuild it."
            )
            return output_dir
        print(f"Synthetic sample in {output_dir} has missing files; rebuilding.")
    elif ours and not force:
        print(f"Synthetic sample in {output_dir} has other parameters; rebuilding.")
    elif not ours and not force:
        existing = [output_dir / s for s in SPLITS if _has_files(output_dir / s)]
        if existing:
            raise DataError(
                f"{existing[0]} already holds data that this generator did not "
                "write (no synthetic-sample marker). Use --force to replace it, or "
                "choose another --output folder."
            )

    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(output_dir)
    profiles = {p.name: p for p in make_cohort_profiles(n_cohorts, seed)}
    partial = {}
    try:
        for split in SPLITS:
            partial[split] = Path(
                tempfile.mkdtemp(prefix=f".{split}.partial-", dir=output_dir)
            )
            os.chmod(partial[split], 0o755)  # mkdtemp makes it private (0700)
        tasks = [
            (record, profiles[record.cohort], seed, downsample, partial[record.split])
            for record in records
        ]
        n_jobs = _default_jobs(len(tasks), downsample) if n_jobs is None else n_jobs
        rows = []
        with tqdm(
            total=len(tasks),
            desc=f"Synthetic sample ({downsample} mm)",
            unit="subject",
            disable=not progress,
        ) as bar:
            if n_jobs > 1:
                import multiprocessing

                load_anatomy(downsample)  # once, shared by forked workers
                with multiprocessing.Pool(n_jobs) as pool:
                    for row in pool.imap(_generate_one, tasks):
                        rows.append(row)
                        bar.update()
            else:
                for task in tasks:
                    rows.append(_generate_one(task))
                    bar.update()
        splits_of_rows = [row.pop("split") for row in rows]
        for split in SPLITS:
            split_rows = [
                row
                for row, side in zip(rows, splits_of_rows, strict=True)
                if side == split
            ]
            _write_json_atomically(
                partial[split] / "dataset_description.json",
                _dataset_description(split, parameters),
            )
            _write_participants(partial[split] / "participants.tsv", split_rows)
        _move_into_place(output_dir, partial)
        _write_json_atomically(output_dir / COMPLETION_MARKER, parameters)
    finally:
        for folder in partial.values():
            shutil.rmtree(folder, ignore_errors=True)
    print(f"Synthetic sample written to {output_dir} ({described}).")
    return output_dir


def _move_into_place(output_dir: Path, partial: dict) -> None:
    """Replace the old splits by the new, complete ones."""
    # The data are about to change: whatever happens next, the old marker
    # must not vouch for them.
    (output_dir / COMPLETION_MARKER).unlink(missing_ok=True)
    for split, new in partial.items():
        final = output_dir / split
        old = None
        if final.exists():
            old = output_dir / f".{split}.old-{new.name.rsplit('-', 1)[-1]}"
            os.replace(final, old)
        os.replace(new, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_atlas_release(
    root, n_subjects: int = 8, n_unlabelled: int = 4, seed: int = 0, downsample: int = 4
) -> Path:
    """Write a small synthetic tree in the layout of the ATLAS R2.0 release.

    ::

        <root>/ATLAS_2/Training/R001/sub-r001s001/ses-1/anat/{T1w, mask}
        <root>/ATLAS_2/Testing/R001/sub-r001s004/ses-1/anat/{T1w}   (no mask)

    Subjects are dealt round-robin to up to three cohorts; Testing subjects
    come from the same cohorts with other subject numbers, as in ATLAS. Used to
    build fake archives that test the real-archive pipeline.

    Parameters
    ----------
    root : path
        Folder that receives ``ATLAS_2``.
    n_subjects : int
        Labelled subjects (``Training``).
    n_unlabelled : int
        Unlabelled subjects (``Testing``).
    seed : int
    downsample : int

    Returns
    -------
    Path
        ``<root>/ATLAS_2``.
    """
    anatomy = load_anatomy(downsample)
    release = Path(root) / "ATLAS_2"
    n_total = n_subjects + n_unlabelled
    n_cohorts = max(1, min(3, n_total))
    profiles = make_cohort_profiles(n_cohorts, seed)
    next_number = [1] * n_cohorts
    for index in range(n_total):
        position = index % n_cohorts
        subject_id = "sub-" + subject_label(position + 1, next_number[position])
        next_number[position] += 1
        labelled = index < n_subjects
        split_dir = release / ("Training" if labelled else "Testing")
        subject = make_subject(subject_seed(seed, index), profiles[position], anatomy)
        write_subject(split_dir, subject_id, subject, with_mask=labelled)
    return release
