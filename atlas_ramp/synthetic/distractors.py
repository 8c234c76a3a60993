"""Distractors: brain changes that are dark like lesions but are not traced.

Drawn in template space, before the deformation: atrophy (widened sulci and
enlarged ventricles), white-matter hypointensities of vascular origin
(periventricular caps and bands, bilateral, milder than a stroke lesion, plus
punctate ones) and perivascular spaces (tiny elongated dark dots in the basal
ganglia and the white matter). The ATLAS tracing protocol leaves them out of
the mask, so a model that labels every dark voxel is wrong on them.
"""

from __future__ import annotations

import numpy as np

from .anatomy import WMH_REGION_MM, coarse_regions
from .fields import SmoothNoise
from .shapes import ellipsoid_radius, random_orientation, rim_width, tilted_z_axis


def add_atrophy(anatomy, image, tissue, sulcal: float, ventricular: float) -> None:
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
    box = anatomy.box_around(centre_mm, half)
    radius = ellipsoid_radius(anatomy.grid_mm(box), centre_mm, axes_mm, rotation)
    width = rim_width(anatomy, 0.5)
    fraction = np.clip(0.5 + (1 - radius) * min(axes_mm) / width, 0, 1) * peak
    fraction *= np.clip(tissue[box], 0, 1)  # only where there is tissue
    image[box] += fraction * (level - image[box])
    if level < anatomy.levels["gm"]:  # fluid-filled: less tissue for lesions
        tissue[box] *= 1 - 0.5 * fraction


def add_white_matter_hypointensities(anatomy, image, tissue, rng, severity) -> None:
    """Periventricular caps and bands plus punctate lesions, both hemispheres.

    On T1 they are milder than a chronic stroke (between grey and white matter)
    and they are not traced. ``severity`` is 0 (none) to 1 (confluent).
    """
    levels = anatomy.levels
    depth = (levels["wm"] - levels["gm"]) * rng.uniform(0.5, 1.0)
    pattern = SmoothNoise(rng, *WMH_REGION_MM, spacing=5.0)
    n_punctate = rng.poisson(10 * severity**1.5)
    punctate = [
        (rng.integers(1 << 30), rng.uniform(1.0, 2.5, size=3), rng.uniform(0.5, 1))
        for _ in range(n_punctate)
    ]
    if severity > 0.05:
        box = anatomy.box_around(
            WMH_REGION_MM.mean(0), np.ptp(WMH_REGION_MM, axis=0) / 2
        )
        grid = anatomy.grid_mm(box)
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
    candidates = coarse_regions()["points"][("deep_white_matter", "any")]
    level = levels["wm"] - depth
    for pick, axes, peak in punctate:
        centre = candidates[pick % len(candidates)]
        _add_blob(anatomy, image, tissue, centre, axes, np.eye(3), level, peak)


def add_perivascular_spaces(anatomy, image, tissue, rng, count: int) -> None:
    """Tiny elongated fluid-filled spaces along vessels (basal ganglia, WM)."""
    points = coarse_regions()["points"]
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
            rotation = tilted_z_axis(rng.normal(0, 0.25, size=2))
        else:
            rotation = random_orientation(rng)
        peak = rng.uniform(0.6, 1.0)
        _add_blob(anatomy, image, tissue, centre, axes, rotation, level, peak)
