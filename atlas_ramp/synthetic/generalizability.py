"""The generalizability split: subjects from cohorts that training never saw.

ATLAS v2.0 holds out 316 generalizability subjects from 11 cohorts that appear
neither in its training nor in its test set: an algorithm is judged on data it
could not tune to. The synthetic sample does the same in
``data/generalizability`` (16 subjects by default). Its cohorts get new numbers
(after the train/test cohorts: ``R007`` ... for the default 6) and differ from
every training cohort in what the scanner does, how the brains vary and how the
lesions look. The lesion *statistics* (how many, where, how large) are those of
ATLAS, as for train and test: what changes is the appearance, not the task.

What is outside the training ranges
------------------------------------
Scanner (:func:`make_unseen_cohort_profiles`; training ranges in
:data:`~atlas_ramp.synthetic.scanners.TRAINING_RANGES`), every unseen cohort:

============================  ======================  ==========================
field                         training cohorts        unseen cohorts
============================  ======================  ==========================
contrast curve ``gamma``      0.8 - 1.25              0.55 - 0.72 or 1.35 - 1.6
grey matter shift             -0.06 - 0.04            -0.12 - -0.08 or 0.06 - 0.1
fluid shift                   -0.04 - 0.06            -0.1 - -0.06 or 0.08 - 0.12
Rician noise (of WM)          0.015 - 0.045           0.005 - 0.01 or 0.055 - 0.08
bias field (log scale)        0.04 - 0.18             0.25 - 0.4
intensity scale               300 - 2992              100 - 250 or 3500 - 6000
offset (share of the scale)   0 - 0.13                0.2 - 0.35
blur (FWHM)                   none, or 1.2 - 2 mm     none, or 2.4 - 3.2 mm
                              (2 cohorts of 6)        (every other cohort)
============================  ======================  ==========================

Subjects (:data:`UNSEEN_VARIATION`; the training one is
:class:`~atlas_ramp.synthetic.subject.SubjectVariation`'s defaults):

============================  ======================  ==========================
                              training subjects       unseen subjects
============================  ======================  ==========================
deformation (SD per axis)     1.2 - 2.5 mm            2.7 - 3.5 mm
residual misregistration      none                    rigid: 1.5 - 3 mm shift and
                                                      1.5 - 3 degrees rotation
white-matter hypointensities  Beta(1.3, 3) severity:  severity 0.6 - 1
                              9% of subjects >= 0.6
perivascular spaces           8 - 49                  60 - 119
lesion core (x fluid level)   0.9 - 1.6               1.65 - 1.9 (gliotic, less
                                                      dark)
lesion border (rim)           1.0 - 2.5 mm            2.6 - 3.5 mm (more diffuse)
============================  ======================  ==========================

The residual misregistration is what an imperfect registration to MNI leaves:
the image and its mask move together (the affine still says MNI), so a model
that leans on the exact template position of tissue pays for it.

Generalizability subjects have their own random streams
(:mod:`~atlas_ramp.synthetic.streams`): adding, removing or resizing the split
leaves train and test byte for byte the same.
"""

from __future__ import annotations

import numpy as np

from .scanners import CohortProfile
from .streams import UNSEEN_COHORT_STREAM
from .subject import SubjectVariation

#: Default number of generalizability subjects.
N_GENERALIZABILITY = 16
#: At most as many unseen cohorts as ATLAS has (11).
MAX_UNSEEN_COHORTS = 11

#: How generalizability subjects vary (see the module's tables).
UNSEEN_VARIATION = SubjectVariation(
    deformation_mm=(2.7, 3.5),
    white_matter_hypointensity=(0.6, 1.0, 2.0, 2.0),
    perivascular_spaces=(60, 120),
    lesion_core=(1.65, 1.9),
    lesion_rim_mm=(2.6, 3.5),
    misregistration_mm=(1.5, 3.0),
    misregistration_degrees=(1.5, 3.0),
)

# Ranges of the unseen cohorts' scanner fields: one of two ranges (on either
# side of the training range) or one range beyond it.
_UNSEEN_RANGES = {
    "gamma": ((0.55, 0.72), (1.35, 1.6)),
    "gm_shift": ((-0.12, -0.08), (0.06, 0.1)),
    "csf_shift": ((-0.1, -0.06), (0.08, 0.12)),
    "noise": ((0.005, 0.01), (0.055, 0.08)),
    "bias": ((0.25, 0.4),),
    "intensity_scale": ((100.0, 250.0), (3500.0, 6000.0)),
}
#: Intensity offset as a share of the intensity scale (training: at most
#: 40 / 300 = 0.13).
UNSEEN_OFFSET_SHARE = (0.2, 0.35)
_UNSEEN_BLUR_MM = (2.4, 3.2)
_DECIMALS = {
    "gamma": 3,
    "gm_shift": 3,
    "csf_shift": 3,
    "noise": 4,
    "bias": 3,
    "intensity_scale": 1,
}


def n_unseen_cohorts(n_subjects: int) -> int:
    """Number of unseen cohorts for ``n_subjects`` (about 4 subjects each)."""
    return max(1, min(MAX_UNSEEN_COHORTS, round(n_subjects / 4)))


def make_unseen_cohort_profiles(
    n_cohorts: int, seed: int = 0, first_number: int = 1
) -> list[CohortProfile]:
    """Scanner profiles of unseen cohorts, every field outside the training ranges.

    Parameters
    ----------
    n_cohorts : int
        Number of unseen cohorts.
    seed : int
        Sample seed (their own stream: the training cohorts do not change).
    first_number : int
        Number of the first cohort (``R007`` for 7): after the training ones.

    Returns
    -------
    list of CohortProfile
        Every other cohort (the first, third...) is blurred 2.4-3.2 mm.
    """
    rng = np.random.default_rng([int(seed), UNSEEN_COHORT_STREAM])
    profiles = []
    for position in range(n_cohorts):
        fields = {}
        for name, choices in _UNSEEN_RANGES.items():
            low, high = choices[rng.integers(len(choices))]
            if name == "intensity_scale":  # log-uniform, as for training
                value = np.exp(rng.uniform(np.log(low), np.log(high)))
            else:
                value = rng.uniform(low, high)
            fields[name] = round(float(value), _DECIMALS[name])
        offset = rng.uniform(*UNSEEN_OFFSET_SHARE) * fields["intensity_scale"]
        blur = rng.uniform(*_UNSEEN_BLUR_MM) if position % 2 == 0 else 0.0
        profiles.append(
            CohortProfile(
                name=f"R{first_number + position:03d}",
                intensity_offset=round(float(offset), 1),
                blur_fwhm_mm=round(float(blur), 2),
                **fields,
            )
        )
    return profiles
