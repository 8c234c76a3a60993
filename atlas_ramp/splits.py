"""Splitting subjects while respecting cohorts (ATLAS sites).

ATLAS subjects come from 33 cohorts that differ in scanner and protocol. Two
questions need two kinds of split:

* *Does the model work on new subjects from sites it has seen?* This is what the
  ATLAS hidden test set measures (same cohorts as training). We answer it with a
  cohort-stratified shuffle split: every cohort is spread over train and
  validation in the same proportion. :class:`CohortStratifiedShuffleSplit` is the
  kit's default cross-validation, and :func:`stratified_holdout` builds the local
  ``data/test`` hold-out the same way.
* *Does it work on sites it has never seen?* This is what the generalizability
  set measures (11 new cohorts). :class:`LeaveCohortsOut` keeps whole cohorts out
  of training.

Both split *subjects*: when a subject has several sessions (entries with the same
``X.subject_ids``), all of them fall on the same side of every fold. Neither ever
yields an empty training or validation fold: too little data is a
:class:`~atlas_ramp.bids.DataError` that says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.model_selection import GroupKFold

from .bids import DataError

#: Stratum of the cohorts that have a single subject (see CohortStratifiedShuffleSplit).
POOLED_STRATUM = "<cohorts of one subject>"


def _per_cohort_counts(cohorts: np.ndarray, fraction: float, rng) -> dict:
    """How many subjects of each cohort go to the held-out side.

    Largest-remainder rounding keeps the total at ``round(fraction * n)`` while
    every cohort gets its fair share (ties broken at random).
    """
    names, sizes = np.unique(cohorts, return_counts=True)
    target = int(round(fraction * len(cohorts)))
    exact = sizes * fraction
    counts = np.floor(exact).astype(int)
    remainder = exact - counts
    order = np.lexsort((rng.random(len(names)), -remainder))
    for position in order[: max(target - counts.sum(), 0)]:
        counts[position] += 1
    # Keep at least one training subject in each cohort where possible.
    counts = np.minimum(counts, np.maximum(sizes - 1, 0))
    return dict(zip(names, counts, strict=True))


def _draw_per_stratum(ids: np.ndarray, strata: np.ndarray, fraction: float, rng):
    """Draw ``fraction`` of the subjects of each stratum (cohort) at random.

    Returns
    -------
    held_out : list of str
    counts : dict of str to int
        How many were drawn from each stratum (:func:`_per_cohort_counts`).
    """
    counts = _per_cohort_counts(strata, fraction, rng)
    held_out = []
    for stratum, count in counts.items():
        held_out.extend(rng.permutation(ids[strata == stratum])[:count].tolist())
    return held_out, counts


def stratified_holdout(
    subject_ids: Sequence[str],
    cohorts: Sequence[str],
    test_fraction: float,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Split subjects into train and test, cohort by cohort, reproducibly.

    Parameters
    ----------
    subject_ids : sequence of str
        Subject IDs (``sub-r001s001``).
    cohorts : sequence of str
        The cohort of each subject.
    test_fraction : float
        Share of subjects held out, in (0, 1).
    seed : int
        The same seed and subjects always give the same split, whatever their
        order.

    Returns
    -------
    train_ids, test_ids : list of str
        Sorted subject IDs.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    order = np.argsort(np.asarray(subject_ids))
    ids = np.asarray(subject_ids)[order]
    groups = np.asarray(cohorts)[order]
    rng = np.random.default_rng(seed)
    test, _ = _draw_per_stratum(ids, groups, test_fraction, rng)
    test_set = set(test)
    train = [s for s in ids.tolist() if s not in test_set]
    return sorted(train), sorted(test)


def _subjects_and_cohorts(X, groups) -> tuple[np.ndarray, np.ndarray]:
    """Subject and cohort of each entry: ``groups`` (cohorts) or ``X.cohorts``."""
    cohorts = np.asarray(X.cohorts if groups is None else groups)
    subjects = getattr(X, "subject_ids", None)
    if subjects is None or len(subjects) != len(cohorts):
        subjects = np.arange(len(cohorts))  # no IDs: every entry its own subject
    return np.asarray(subjects), cohorts


class CohortStratifiedShuffleSplit:
    """Shuffle splits where each cohort is split in the same proportion.

    Mirrors the ATLAS hidden test set: validation subjects are new, their
    cohorts are not. Subjects, not entries, are drawn: all sessions of a subject
    go to the same side.

    Why not scikit-learn's ``StratifiedShuffleSplit(y=cohorts)``? It refuses any
    cohort of a single subject ("The least populated class in y has only 1
    member"), which small samples and real multi-site data have, and it knows
    nothing of sessions. Here cohorts of one subject are pooled into one stratum
    (:data:`POOLED_STRATUM`), split in the same proportion; so such a subject
    may be validated without any training subject of its cohort, as a new site.

    Parameters
    ----------
    n_splits : int
        Number of folds.
    test_size : float
        Share of subjects in each validation fold, in (0, 1); at least one
        subject is validated, and at least one trains.
    random_state : int
        Seed; folds are reproducible.
    """

    def __init__(self, n_splits: int = 5, test_size: float = 0.2, random_state=42):
        self.n_splits = n_splits
        self.test_size = test_size
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits

    def split(self, X, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_indices, valid_indices)``, never empty.

        Parameters
        ----------
        X : ImageSequence or anything with ``cohorts`` (and ``subject_ids``)
            The entries to split.
        groups : sequence of str, optional
            The cohort of each entry; defaults to ``X.cohorts``.

        Raises
        ------
        DataError
            Fewer than two subjects.
        """
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size must be in (0, 1), got {self.test_size}.")
        entry_subjects, entry_cohorts = _subjects_and_cohorts(X, groups)
        subjects, first_entry = np.unique(entry_subjects, return_index=True)
        if subjects.size < 2:
            raise DataError(
                f"Cross-validation needs at least 2 subjects, the data has "
                f"{subjects.size}: add subjects to the training folder."
            )
        cohorts = entry_cohorts[first_entry]
        names, sizes = np.unique(cohorts, return_counts=True)
        singletons = set(names[sizes == 1])
        strata = np.array([POOLED_STRATUM if c in singletons else c for c in cohorts])
        rng = np.random.default_rng(self.random_state)
        for _ in range(self.n_splits):
            valid_subjects, counts = _draw_per_stratum(
                subjects, strata, self.test_size, rng
            )
            if not valid_subjects:
                # Only when the share rounds to no subject: validate one subject
                # of the largest stratum (it keeps training subjects).
                largest = max(counts, key=lambda name: np.sum(strata == name))
                valid_subjects = [rng.choice(subjects[strata == largest])]
            is_valid = np.isin(entry_subjects, valid_subjects)
            yield np.flatnonzero(~is_valid), np.flatnonzero(is_valid)


class LeaveCohortsOut:
    """Folds that hold out whole cohorts, mirroring the generalizability set.

    A thin, named wrapper around scikit-learn's ``GroupKFold`` with the cohorts
    as groups: cohorts, largest first, are dealt to the fold that has the fewest
    subjects so far, so fold sizes stay balanced. Equivalent to
    ``GroupKFold(n_splits).split(X, groups=X.cohorts)``. No cohort (hence no
    subject, nor any of its sessions) is on both sides.

    Parameters
    ----------
    n_splits : int
        Number of folds: at least 2, at most the number of cohorts.
    """

    def __init__(self, n_splits: int = 5):
        self.n_splits = n_splits

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits

    def split(self, X, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_indices, valid_indices)``; no cohort is on both sides.

        Raises
        ------
        DataError
            Fewer cohorts than folds.
        """
        cohorts = np.asarray(X.cohorts if groups is None else groups)
        n_cohorts = np.unique(cohorts).size
        if n_cohorts < self.n_splits:
            raise DataError(
                f"LeaveCohortsOut needs at least {self.n_splits} cohorts, the data "
                f"has {n_cohorts}: lower n_splits."
            )
        # X is only counted: pass a plain range so that nothing is loaded.
        positions = np.arange(len(cohorts))
        yield from GroupKFold(n_splits=self.n_splits).split(positions, groups=cohorts)
