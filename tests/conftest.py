"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory):
    """A small synthetic sample (12 train + 6 test subjects, 3 cohorts, 4 mm).

    Returns the data folder, the one holding ``train/`` and ``test/``. Built
    once per test session; tests must not modify it.
    """
    from atlas_ramp.synthetic import build_sample

    folder = tmp_path_factory.mktemp("small_sample")
    build_sample(
        folder,
        n_train=12,
        n_test=6,
        n_cohorts=3,
        seed=0,
        downsample=4,
        progress=False,
    )
    return folder


@pytest.fixture(scope="session")
def release_tree(tmp_path_factory):
    """A small tree in the layout of the ATLAS R2.0 release, built once per session.

    ``<tmp>/ATLAS_2/{Training,Testing}``: 15 labelled subjects in 3 cohorts (so
    that every split of the instructor's tests holds every cohort), 3
    unlabelled. Returns the ``ATLAS_2`` folder; tests must not modify it.
    """
    from atlas_ramp.testing.release import write_atlas_release

    root = tmp_path_factory.mktemp("release")
    return write_atlas_release(root, n_subjects=15, n_unlabelled=3)
