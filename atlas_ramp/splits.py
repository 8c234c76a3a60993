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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


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
    counts = _per_cohort_counts(groups, test_fraction, rng)
    test = []
    for cohort, count in counts.items():
        members = ids[groups == cohort]
        test.extend(rng.permutation(members)[:count].tolist())
    test_set = set(test)
    train = [s for s in ids.tolist() if s not in test_set]
    return sorted(train), sorted(test)


class CohortStratifiedShuffleSplit:
    """Shuffle splits where each cohort is split in the same proportion.

    Mirrors the ATLAS hidden test set: validation subjects are new, their
    cohorts are not.

    Parameters
    ----------
    n_splits : int
        Number of folds.
    test_size : float
        Share of subjects in each validation fold.
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
        """Yield ``(train_indices, valid_indices)``.

        Parameters
        ----------
        X : sequence
            Anything with a length; only used when ``groups`` is None.
        groups : sequence of str, optional
            The cohort of each subject; defaults to ``X.cohorts``.
        """
        cohorts = np.asarray(X.cohorts if groups is None else groups)
        rng = np.random.default_rng(self.random_state)
        all_indices = np.arange(len(cohorts))
        for _ in range(self.n_splits):
            counts = _per_cohort_counts(cohorts, self.test_size, rng)
            valid = []
            for cohort, count in counts.items():
                members = all_indices[cohorts == cohort]
                valid.extend(rng.permutation(members)[:count].tolist())
            valid = np.sort(np.asarray(valid, dtype=int))
            train = np.setdiff1d(all_indices, valid)
            yield train, valid


class LeaveCohortsOut:
    """Folds that hold out whole cohorts, mirroring the generalizability set.

    Cohorts are dealt to folds so that fold sizes (in subjects) stay balanced.

    Parameters
    ----------
    n_splits : int
        Number of folds; at most the number of cohorts.
    random_state : int
        Seed for breaking ties between cohorts of equal size.
    """

    def __init__(self, n_splits: int = 5, random_state=42):
        self.n_splits = n_splits
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits

    def split(self, X, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_indices, valid_indices)``; no cohort is on both sides."""
        cohorts = np.asarray(X.cohorts if groups is None else groups)
        names, sizes = np.unique(cohorts, return_counts=True)
        if len(names) < self.n_splits:
            raise ValueError(
                f"LeaveCohortsOut needs at least {self.n_splits} cohorts, the data "
                f"has {len(names)}: lower n_splits."
            )
        rng = np.random.default_rng(self.random_state)
        # Largest cohorts first, each to the currently smallest fold.
        order = np.lexsort((rng.random(len(names)), -sizes))
        fold_sizes = np.zeros(self.n_splits, dtype=int)
        fold_of_cohort = {}
        for position in order:
            fold = int(np.argmin(fold_sizes))
            fold_of_cohort[names[position]] = fold
            fold_sizes[fold] += sizes[position]
        folds = np.array([fold_of_cohort[c] for c in cohorts])
        all_indices = np.arange(len(cohorts))
        for fold in range(self.n_splits):
            yield all_indices[folds != fold], all_indices[folds == fold]
