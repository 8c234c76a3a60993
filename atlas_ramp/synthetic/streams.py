"""Random streams: which seed drives which part of a synthetic sample.

A sample is reproducible byte for byte from its seed, and its parts do not
depend on each other: each draws from its own stream, a
:class:`numpy.random.SeedSequence` keyed by what it is for. Adding a part (the
generalizability split did) therefore leaves the others exactly as they were.

Streams of a sample (the second key after the seed):

====================  =====================================================
``SUBJECT_STREAM``    train and test subjects, one child per subject index
``COHORT_STREAM``     scanner profiles of the train/test cohorts
``LAYOUT_STREAM``     cohort sizes and the train/test split
``UNSEEN_*``          the same three for the generalizability split
====================  =====================================================

Streams of one subject (children of its seed sequence): ``PLAN`` (lesion plan
and distractor severities), ``ANATOMY`` (distractors, deformation),
``SCANNER`` (bias field, noise), ``MISREGISTRATION`` (the residual rigid
misalignment of generalizability subjects), ``LESION0 + k`` (lesion ``k``).
Separate streams keep, e.g., the lesions unchanged when the noise draws change
with the grid.
"""

from __future__ import annotations

import numpy as np

SUBJECT_STREAM, COHORT_STREAM, LAYOUT_STREAM = 1, 2, 3
UNSEEN_SUBJECT_STREAM, UNSEEN_COHORT_STREAM, UNSEEN_LAYOUT_STREAM = 4, 5, 6

PLAN, ANATOMY, SCANNER, MISREGISTRATION, LESION0 = 0, 1, 2, 3, 10


def subject_seed(
    seed: int, index: int, *, generalizability: bool = False
) -> np.random.SeedSequence:
    """Seed sequence of subject number ``index`` of a sample built with ``seed``.

    Each subject has its own stream, so subjects do not depend on each other.

    Parameters
    ----------
    seed : int
        The sample's seed.
    index : int
        The subject's number: train and test subjects are numbered together,
        generalizability subjects separately.
    generalizability : bool
        A subject of the generalizability split (its own streams).
    """
    stream = UNSEEN_SUBJECT_STREAM if generalizability else SUBJECT_STREAM
    return np.random.SeedSequence([int(seed), stream, int(index)])


def as_seed_sequence(seed) -> np.random.SeedSequence:
    """``seed`` itself if it is a SeedSequence, else ``SeedSequence(seed)``."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(int(seed))


def child_rng(sequence: np.random.SeedSequence, key: int) -> np.random.Generator:
    """The generator of child stream ``key`` of ``sequence``.

    Like :meth:`numpy.random.SeedSequence.spawn`, but pure: the same key always
    gives the same stream, however many times it is asked for.
    """
    child = np.random.SeedSequence(
        sequence.entropy, spawn_key=(*sequence.spawn_key, key)
    )
    return np.random.default_rng(child)
