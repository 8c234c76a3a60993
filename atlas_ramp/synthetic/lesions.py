"""Chronic stroke lesions: how many, where and how large (the plan), then drawn.

Lesion statistics follow the ATLAS training set (Liew et al., Sci. Data 2022):
about 62% of subjects have a single lesion (the others 2-4); lesions are about
25% cortical/white matter, 60% subcortical and 15% cerebellum/brainstem, left and
right equally often; total lesion volume has a median around 5 mL and a heavy
tail up to hundreds of mL.

A lesion is drawn in subject space (after the deformation) as an irregular
ellipsoid: an ellipsoid whose radius is perturbed by smooth random noise,
restricted to brain tissue of one hemisphere. Its core is about as dark as
cerebrospinal fluid and its border fades through a partial-volume rim. The mask
holds the voxels where the lesion makes up more than half of the voxel, as a
tracer would draw it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy, coarse_regions
from .fields import SmoothNoise, source_coords, trilinear
from .shapes import ellipsoid_radius, random_orientation, rim_width

#: Lesion location classes, as in the ATLAS R2.0 paper.
LOCATIONS = ("cortical", "subcortical", "cerebellum_brainstem")
#: Share of subjects whose (largest) lesion is in each class.
LOCATION_SHARES = (0.25, 0.60, 0.15)
#: Share of subjects with 1, 2, 3 and 4 lesions.
N_LESIONS_SHARES = (0.62, 0.20, 0.11, 0.07)

# Log-normal lesion volumes (median mL, sigma of log, min mL, max mL).
_PRIMARY_VOLUME = {
    "cortical": (30.0, 1.1, 0.3, 450.0),
    "subcortical": (2.2, 1.2, 0.01, 120.0),
    "cerebellum_brainstem": (3.0, 1.1, 0.02, 80.0),
}
_SECONDARY_VOLUME = (0.8, 1.3, 0.01)


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
        :attr:`~atlas_ramp.synthetic.SyntheticSubject.info` for the actual one).
    """

    location: str
    hemisphere: str
    volume_ml: float


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


def _shape_of(plan: LesionPlan, rng) -> tuple[np.ndarray, float]:
    """Relative semi-axes and outline roughness of a lesion of this class."""
    if plan.location == "subcortical":
        aspect = np.array([1.0, rng.uniform(0.45, 0.8), rng.uniform(0.4, 0.75)])
        roughness = rng.uniform(0.15, 0.3)
    elif plan.location == "cortical":
        aspect = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.9)])
        roughness = rng.uniform(0.3, 0.45)
    else:
        aspect = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.9)])
        roughness = rng.uniform(0.15, 0.3)
    return aspect, roughness


def _subject_point(anatomy: Anatomy, point, displacement) -> np.ndarray:
    """Where a template point landed in the deformed subject."""
    index = anatomy.index_of(point)
    box_index = [int(index[d]) - anatomy.warp_box[d].start for d in range(3)]
    box_shape = displacement[0].shape
    if all(0 <= box_index[d] < box_shape[d] for d in range(3)):
        shift = np.array([displacement[d][tuple(box_index)] for d in range(3)])
    else:
        shift = np.zeros(3)
    return point - shift


def _clip_to_warp_box(anatomy: Anatomy, box) -> tuple:
    # Lesions are inside the brain, hence inside the warp box.
    return tuple(
        slice(
            max(b.start, w.start), max(min(b.stop, w.stop), max(b.start, w.start) + 1)
        )
        for b, w in zip(box, anatomy.warp_box, strict=True)
    )


def draw_lesion(
    anatomy,
    plan,
    rng,
    image,
    tissue,
    mask,
    displacement,
    last_try,
    *,
    core_range=(0.9, 1.6),
    rim_mm_range=(1.0, 2.5),
):
    """Draw one lesion into ``image`` and ``mask`` (subject space).

    Parameters
    ----------
    anatomy : Anatomy
    plan : LesionPlan
    rng : numpy.random.Generator
        The lesion's own stream.
    image, mask : ndarray
        Subject space; modified in place.
    tissue : ndarray
        Where lesions can be, in template space.
    displacement : list of ndarray
        The subject's deformation (:func:`~.fields.draw_displacement`).
    last_try : bool
        Draw the lesion even if it touches an earlier one.
    core_range : (float, float)
        Core intensity, as a multiple of the fluid level.
    rim_mm_range : (float, float)
        Width of the partial-volume border (mm).

    Returns
    -------
    dict or None
        The lesion's info, or None when it touched an earlier lesion (the
        caller tries another place) unless ``last_try``.
    """
    levels = anatomy.levels
    side = -1.0 if plan.hemisphere == "left" else 1.0
    candidates = coarse_regions()["points"][(plan.location, plan.hemisphere)]
    point = candidates[rng.integers(len(candidates))] + rng.uniform(-1, 1, size=3)

    # Shape: an ellipsoid whose radius is perturbed by smooth noise.
    aspect, roughness = _shape_of(plan, rng)
    rotation = random_orientation(rng)
    rim_mm = rng.uniform(*rim_mm_range)
    # Core about as dark as fluid (cavitation), or a little brighter (gliosis).
    core = levels["csf"] * rng.uniform(*core_range)
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
    big_noise = SmoothNoise(
        rng, point - half_mm, point + half_mm, spacing=max(0.45 * axes.mean(), 2.0)
    )
    fine_noise = SmoothNoise(
        rng, point - half_mm, point + half_mm, spacing=max(0.25 * axes.mean(), 2.0)
    )

    # The anatomy moved: find where the template point landed in this subject.
    centre = _subject_point(anatomy, point, displacement)
    box = anatomy.box_around(centre, np.full(3, half_mm + anatomy.downsample))
    box = _clip_to_warp_box(anatomy, box)
    grid = anatomy.grid_mm(box)
    radius0 = ellipsoid_radius(grid, centre, axes, rotation)
    fine = fine_noise.on_grid(*grid)
    perturbation = roughness * big_noise.on_grid(*grid) + 0.08 * fine
    # Lesions only replace brain tissue (not fluid) of the deformed anatomy.
    source = source_coords(anatomy, box, displacement)
    tissue_here = trilinear([tissue], source)[0].reshape(radius0.shape)
    allowed = np.clip((tissue_here - 0.2) / 0.6, 0, 1)
    if plan.location != "cerebellum_brainstem":
        # One hemisphere of the template (x < 0 is left).
        source_x = anatomy.axes_mm[0][0] + source[0] * anatomy.downsample
        hemisphere = np.clip(0.5 + side * source_x / 1.5, 0, 1)
        allowed *= hemisphere.reshape(radius0.shape)
    width = rim_width(anatomy, rim_mm)
    mean_axis = float(axes.mean())

    def lesion_fraction(scale):
        radius = radius0 / np.float32(scale) + perturbation
        signed_mm = (1 - radius) * (mean_axis * scale)
        return np.clip(0.5 + signed_mm / width, 0, 1) * allowed

    fraction = _fit_volume(lesion_fraction, target_voxels, max_scale)
    lesion = _traced_outline(fraction, allowed)

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


def _fit_volume(lesion_fraction, target_voxels: float, max_scale: float):
    """Grow or shrink the lesion until its mask has the target volume.

    ``lesion_fraction(scale)`` is the partial-volume map of the lesion scaled
    by ``scale``; returns the map of the scale found (at most 10 tries).
    """
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
    return fraction


def _traced_outline(fraction: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The mask a tracer would draw: one piece, without holes, never empty.

    ``fraction`` (the lesion's share of each voxel) is adjusted in place so that
    the image agrees with the mask.
    """
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
        filled = ndimage.binary_fill_holes(lesion)
        np.maximum(fraction, 0.75, out=fraction, where=filled & ~lesion)
        return filled
    # Tiny lesion on a coarse grid: keep its most lesioned tissue voxel.
    score = np.where(allowed >= 0.5, fraction + 1e-3, 0) + 1e-6 * allowed
    peak = np.unravel_index(int(np.argmax(score)), fraction.shape)
    fraction[peak] = 1.0
    return fraction > 0.5
