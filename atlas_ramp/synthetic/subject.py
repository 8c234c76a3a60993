"""One synthetic subject: the template, changed, deformed, lesioned and scanned.

In this order:

1. **Brain changes, in template space**: the distractors
   (:mod:`~atlas_ramp.synthetic.distractors`).
2. **A smooth random deformation** of a few millimetres, so that no two subjects
   share the template's exact anatomy (:mod:`~atlas_ramp.synthetic.fields`).
3. **Chronic stroke lesions, in subject space**
   (:mod:`~atlas_ramp.synthetic.lesions`).
4. **The cohort's scanner** (:mod:`~atlas_ramp.synthetic.scanners`).
5. For generalizability subjects only, **a residual misregistration**: a small
   rigid motion of image and mask (:func:`~atlas_ramp.synthetic.fields.misregister`).

How much subjects vary (deformation, distractors, lesion appearance) is a
:class:`SubjectVariation`; its defaults are the train and test subjects'.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import streams
from .anatomy import Anatomy, load_anatomy
from .distractors import (
    add_atrophy,
    add_perivascular_spaces,
    add_white_matter_hypointensities,
)
from .fields import draw_displacement, misregister, warp
from .lesions import draw_lesion, sample_lesion_plan
from .scanners import CohortProfile, apply_scanner


@dataclass(frozen=True)
class SubjectVariation:
    """How the subjects of a population vary: the ranges they are drawn from.

    The defaults are those of the train and test subjects;
    :data:`~atlas_ramp.synthetic.generalizability.UNSEEN_VARIATION` is the
    generalizability subjects'. Ranges are ``(low, high)``.

    Attributes
    ----------
    deformation_mm : (float, float)
        Standard deviation (per axis) of the smooth random deformation.
    white_matter_hypointensity : (float, float, float, float)
        Severity ``low + (high - low) * Beta(a, b)``, as ``(low, high, a, b)``.
    perivascular_spaces : (int, int)
        Number of perivascular spaces (high excluded).
    lesion_core : (float, float)
        Lesion core intensity, as a multiple of the fluid level.
    lesion_rim_mm : (float, float)
        Width of the lesion's partial-volume border.
    misregistration_mm, misregistration_degrees : (float, float)
        Residual rigid misregistration (shift length, rotation angle); none
        when the upper bounds are 0.
    """

    deformation_mm: tuple = (1.2, 2.5)
    white_matter_hypointensity: tuple = (0.0, 1.0, 1.3, 3.0)
    perivascular_spaces: tuple = (8, 50)
    lesion_core: tuple = (0.9, 1.6)
    lesion_rim_mm: tuple = (1.0, 2.5)
    misregistration_mm: tuple = (0.0, 0.0)
    misregistration_degrees: tuple = (0.0, 0.0)

    @property
    def misregistered(self) -> bool:
        """Whether subjects get a residual misregistration."""
        return max(self.misregistration_mm[1], self.misregistration_degrees[1]) > 0


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
        perivascular spaces); for misregistered subjects, ``misregistration``
        (``shift_mm``, ``rotation_degrees``, ``rotation_axis``).
    """

    t1: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    info: dict


def make_subject(
    seed,
    cohort_profile: CohortProfile | None = None,
    anatomy: Anatomy | None = None,
    *,
    downsample: int = 1,
    variation: SubjectVariation | None = None,
) -> SyntheticSubject:
    """Generate one synthetic subject in memory.

    Parameters
    ----------
    seed : int or numpy.random.SeedSequence
        The subject's seed; :func:`~atlas_ramp.synthetic.subject_seed` gives the
        one a sample uses. Lesions, deformation and distractors depend only on
        it (not on the grid or the cohort).
    cohort_profile : CohortProfile, optional
        Scanner of the subject's cohort; a neutral default if None.
    anatomy : Anatomy, optional
        Template anatomy; ``load_anatomy(downsample)`` if None.
    downsample : int
        Grid (1 mm ... 8 mm voxels), used when ``anatomy`` is None.
    variation : SubjectVariation, optional
        How subjects vary; the train/test subjects' if None.

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
    variation = SubjectVariation() if variation is None else variation
    with _one_blas_thread():
        return _make_subject(
            streams.as_seed_sequence(seed), profile, anatomy, variation
        )


def _one_blas_thread():
    """Limit BLAS to one thread: its matrices here are small, and threads
    fighting over them made generation several times slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with sklearn
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _make_subject(sequence, profile, anatomy, variation) -> SyntheticSubject:
    plan_rng = streams.child_rng(sequence, streams.PLAN)
    anatomy_rng = streams.child_rng(sequence, streams.ANATOMY)

    lesion_plans = sample_lesion_plan(plan_rng)
    days_post_stroke = int(np.clip(np.exp(plan_rng.normal(np.log(450), 0.9)), 60, 7000))
    atrophy = float(plan_rng.beta(2.0, 3.0))
    ventricular = float(np.clip(atrophy * plan_rng.uniform(0.6, 1.5), 0, 1))
    low, high, a, b = variation.white_matter_hypointensity
    wmh_severity = float(low + (high - low) * plan_rng.beta(a, b))
    n_perivascular = int(plan_rng.integers(*variation.perivascular_spaces))

    # 1. Template space: atrophy, white-matter hypointensities, perivascular spaces.
    image = anatomy.t1.copy()
    tissue = anatomy.tissue.copy()
    add_atrophy(anatomy, image, tissue, atrophy, ventricular)
    add_white_matter_hypointensities(anatomy, image, tissue, anatomy_rng, wmh_severity)
    add_perivascular_spaces(anatomy, image, tissue, anatomy_rng, n_perivascular)

    # 2. A smooth random deformation.
    displacement = draw_displacement(anatomy, anatomy_rng, variation.deformation_mm)
    (image,) = warp(anatomy, displacement, [image])

    # 3. Lesions, in subject space.
    mask = np.zeros(anatomy.shape, dtype=np.uint8)
    lesions, boxes = [], []
    for number, plan in enumerate(lesion_plans):
        lesion_rng = streams.child_rng(sequence, streams.LESION0 + number)
        n_tries = 8  # another place when it touches an earlier lesion
        for attempt in range(n_tries):
            drawn = draw_lesion(
                anatomy,
                plan,
                lesion_rng,
                image,
                tissue,
                mask,
                displacement,
                last_try=attempt == n_tries - 1,
                core_range=variation.lesion_core,
                rim_mm_range=variation.lesion_rim_mm,
            )
            if drawn is not None:
                lesions.append(drawn)
                boxes.append(drawn.pop("box"))
                break

    # 4. The cohort's scanner.
    scanner_rng = streams.child_rng(sequence, streams.SCANNER)
    t1 = apply_scanner(anatomy, profile, image, scanner_rng)

    # 5. A residual misregistration (generalizability subjects).
    motion = None
    if variation.misregistered:
        motion_rng = streams.child_rng(sequence, streams.MISREGISTRATION)
        t1, mask, motion = misregister(
            anatomy,
            t1,
            mask,
            motion_rng,
            variation.misregistration_mm,
            variation.misregistration_degrees,
        )
        _, n_components = ndimage.label(mask)
    else:
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
    if motion is not None:
        info["misregistration"] = motion
    return SyntheticSubject(t1=t1, mask=mask, affine=anatomy.affine.copy(), info=info)
