"""Cohort-aware splits: hold-out and cross-validation."""

from types import SimpleNamespace

import numpy as np
import pytest

from atlas_ramp.splits import (
    CohortStratifiedShuffleSplit,
    LeaveCohortsOut,
    stratified_holdout,
)


def cohorts_of(sizes):
    return np.repeat([f"R{i + 1:03d}" for i in range(len(sizes))], sizes)


COHORTS = cohorts_of([12, 8, 8, 5, 4, 3, 2])
X = SimpleNamespace(cohorts=COHORTS)


def test_stratified_folds_never_share_a_subject_and_cover_every_cohort():
    folds = list(CohortStratifiedShuffleSplit(n_splits=5, test_size=0.2).split(X))
    assert len(folds) == 5
    for train, valid in folds:
        assert np.intersect1d(train, valid).size == 0
        assert train.size + valid.size == COHORTS.size
        assert valid.size == round(0.2 * COHORTS.size)
        # Every cohort keeps training subjects.
        assert set(COHORTS[train]) == set(COHORTS)
    # The big cohort is in every validation fold, in proportion.
    for _, valid in folds:
        assert np.sum(COHORTS[valid] == "R001") in (2, 3)


def test_folds_are_reproducible_and_differ_between_folds():
    first = list(CohortStratifiedShuffleSplit(random_state=1).split(X))
    again = list(CohortStratifiedShuffleSplit(random_state=1).split(X))
    for (a_train, a_valid), (b_train, b_valid) in zip(first, again, strict=True):
        assert np.array_equal(a_valid, b_valid) and np.array_equal(a_train, b_train)
    assert not np.array_equal(first[0][1], first[1][1])


def test_leave_cohorts_out_never_shares_a_cohort():
    folds = list(LeaveCohortsOut(n_splits=3).split(X))
    held_out = []
    for train, valid in folds:
        assert not set(COHORTS[train]) & set(COHORTS[valid])
        held_out.extend(valid.tolist())
    # Every subject is held out exactly once.
    assert sorted(held_out) == list(range(COHORTS.size))
    sizes = [valid.size for _, valid in folds]
    assert max(sizes) - min(sizes) <= 6


def test_leave_cohorts_out_needs_enough_cohorts():
    with pytest.raises(ValueError, match="at least 9 cohorts"):
        list(LeaveCohortsOut(n_splits=9).split(X))


def test_holdout_is_stratified_seeded_and_order_independent():
    ids = [f"sub-r{c[1:]}s{i:03d}" for i, c in enumerate(COHORTS)]
    train, test = stratified_holdout(ids, COHORTS, 0.25, seed=3)
    assert not set(train) & set(test) and len(train) + len(test) == len(ids)
    assert len(test) == round(0.25 * len(ids))
    shuffled = np.random.default_rng(0).permutation(len(ids))
    train2, test2 = stratified_holdout(
        [ids[i] for i in shuffled], COHORTS[shuffled], 0.25, seed=3
    )
    assert (train, test) == (train2, test2)
    assert stratified_holdout(ids, COHORTS, 0.25, seed=4)[1] != test
