"""Scanner profiles: how each cohort's scanner renders the anatomy.

ATLAS pools 33 cohorts scanned on different machines with different protocols.
Each synthetic cohort gets its own profile: grey/white contrast and gamma, a
smooth multiplicative bias field, a Gaussian blur for some cohorts (lower
resolution acquisitions), Rician noise, and an intensity scale and offset
(the stored units differ from site to site).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .fields import add_rician_noise, bias_field
from .streams import COHORT_STREAM


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

#: Each field of a training cohort's profile is ``low + span * u`` for a
#: uniform ``u`` (the intensity scale: its logarithm); written once here, and
#: :data:`TRAINING_RANGES` is derived from it.
_TRAINING_DRAWS = {
    "log_intensity_scale": (float(np.log(300)), 2.3),
    "intensity_offset": (0.0, 40.0),
    "gamma": (0.8, 0.45),
    "gm_shift": (-0.06, 0.1),
    "csf_shift": (-0.04, 0.1),
    "noise": (0.015, 0.03),
    "bias": (0.04, 0.14),
    "blur_fwhm_mm": (1.2, 0.8),
}


def _training_ranges() -> dict:
    """(low, high) of every field, from :data:`_TRAINING_DRAWS`."""
    ranges = {
        name: (low, round(low + span, 3))
        for name, (low, span) in _TRAINING_DRAWS.items()
        if name != "log_intensity_scale"
    }
    low, span = _TRAINING_DRAWS["log_intensity_scale"]
    scale = (round(float(np.exp(low)), 1), round(float(np.exp(low + span)), 1))
    return {"intensity_scale": scale, **ranges}


#: Range of each profile field over the cohorts of :func:`make_cohort_profiles`
#: (the train and test cohorts); blurred cohorts have 1.2-2 mm, others 0.
TRAINING_RANGES = _training_ranges()


def make_cohort_profiles(n_cohorts: int, seed: int = 0) -> list[CohortProfile]:
    """Scanner profiles of cohorts ``R001`` .. ``R0NN``, reproducibly.

    Each field is drawn uniformly in :data:`TRAINING_RANGES` (the intensity
    scale log-uniformly).

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
    rng = np.random.default_rng([int(seed), COHORT_STREAM])
    profiles = []
    for position in range(n_cohorts):
        # One uniform draw per field, in the order of _TRAINING_DRAWS (the
        # order fixes the sample: keep it).
        draws = dict(zip(_TRAINING_DRAWS, rng.uniform(size=8), strict=True))
        value = {
            name: low + span * draws[name]
            for name, (low, span) in _TRAINING_DRAWS.items()
        }
        blurred = position in BLURRED_COHORTS
        profiles.append(
            CohortProfile(
                name=f"R{position + 1:03d}",
                intensity_scale=round(float(np.exp(value["log_intensity_scale"])), 1),
                intensity_offset=round(float(value["intensity_offset"]), 1),
                gamma=round(float(value["gamma"]), 3),
                gm_shift=round(float(value["gm_shift"]), 3),
                csf_shift=round(float(value["csf_shift"]), 3),
                noise=round(float(value["noise"]), 4),
                bias=round(float(value["bias"]), 3),
                blur_fwhm_mm=round(float(value["blur_fwhm_mm"]), 2) if blurred else 0.0,
            )
        )
    return profiles


def _contrast_table(levels: dict, profile: CohortProfile):
    """The cohort's contrast curve, tabulated on 0-2 (template units).

    Piecewise linear through the tissue levels, then a gamma curve; one
    ``np.interp`` over the brain instead of a power.
    """
    wm = levels["wm"]
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
    return table.astype(np.float32), table_step


def apply_scanner(anatomy, profile: CohortProfile, image, rng) -> np.ndarray:
    """Cohort contrast, bias field, blur, Rician noise, scale and offset.

    Parameters
    ----------
    anatomy : Anatomy
    profile : CohortProfile
    image : ndarray of float32
        Subject-space image in template units; modified.
    rng : numpy.random.Generator
        The subject's scanner stream.

    Returns
    -------
    ndarray of float32
        Whole numbers in the cohort's units, at least 1 inside the brain.
    """
    table, table_step = _contrast_table(anatomy.levels, profile)
    flat = image.reshape(-1)
    values = flat[anatomy.warp_index]
    inside = values > 0  # the deformed brain
    values = values[inside]
    index = anatomy.warp_index[inside]
    position = np.clip(values, 0, 2) * np.float32(1 / table_step)
    entry = position.astype(np.int32)
    values = table[entry] + (position - entry) * (table[entry + 1] - table[entry])
    bias = bias_field(anatomy, rng).reshape(-1)[anatomy.warp_index_in_box[inside]]
    values *= np.exp(np.float32(profile.bias) * bias)
    if profile.blur_fwhm_mm > 0:
        box = anatomy.warp_box
        flat[index] = values
        sigma = profile.blur_fwhm_mm / 2.3548 / anatomy.downsample
        image[box] = ndimage.gaussian_filter(image[box], sigma, truncate=3.0)
        values = flat[index]
    values = add_rician_noise(values, profile.noise, rng)
    values *= np.float32(profile.intensity_scale)
    values += np.float32(profile.intensity_offset)
    t1 = np.zeros(anatomy.shape, dtype=np.float32)
    t1.reshape(-1)[index] = np.maximum(np.rint(values), 1)
    return t1
