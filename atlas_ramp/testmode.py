"""``ramp-test --quick-test``, read in one place.

``ramp-test --quick-test`` sets the environment variable ``RAMP_TEST_MODE=1``
before it imports ``problem.py`` and the submission. The problem then loads a few
subjects and runs 2 folds; a submission may train for fewer steps. Everything in
the kit asks :func:`is_quick_test` rather than reading the variable itself, so
that ``problem.py`` and every submission agree on what each value means.

The rule: unset, empty, ``0``, ``false``, ``no`` or ``off`` (any case) is the full
run; any other value is quick mode. ``RAMP_TEST_MODE=1 ramp-blend ...`` blends the
2 folds that a quick ``ramp-test --save-output`` saved.

On a course server, the sandbox (:mod:`atlas_ramp.course.sandbox`) sets a second
variable, ``ATLAS_RAMP_UNLABELLED_TEST=1``: the test split is then read as
unlabelled (its masks are not in the sandbox), ``ramp-test`` saves the test
predictions and reports NaN test scores, and trusted code outside the sandbox
scores them (:mod:`atlas_ramp.course.trusted_scoring`). It follows the same rule.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

#: The variable that ``ramp-test --quick-test`` sets.
QUICK_TEST_VARIABLE = "RAMP_TEST_MODE"
#: The variable that the course server's sandbox sets: the test split has no masks.
UNLABELLED_TEST_VARIABLE = "ATLAS_RAMP_UNLABELLED_TEST"
_FULL_RUN_VALUES = frozenset({"", "0", "false", "no", "off"})


def _is_set(name: str, environ: Mapping[str, str] | None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(name, "").strip().lower() not in _FULL_RUN_VALUES


def is_quick_test(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs under ``ramp-test --quick-test``.

    Parameters
    ----------
    environ : mapping, optional
        The environment to read; ``os.environ`` by default.

    Returns
    -------
    bool
        True when ``RAMP_TEST_MODE`` is set to a value other than an empty
        string, ``0``, ``false``, ``no`` or ``off``.
    """
    return _is_set(QUICK_TEST_VARIABLE, environ)


def is_unlabelled_test(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the test split is to be read without its masks (in the sandbox).

    Parameters
    ----------
    environ : mapping, optional
        The environment to read; ``os.environ`` by default.

    Returns
    -------
    bool
        True when ``ATLAS_RAMP_UNLABELLED_TEST`` is set to a value other than
        an empty string, ``0``, ``false``, ``no`` or ``off``.
    """
    return _is_set(UNLABELLED_TEST_VARIABLE, environ)


@contextlib.contextmanager
def quick_test_mode(quick: bool) -> Iterator[None]:
    """Run a block as ``ramp-test`` would, with or without ``--quick-test``.

    For code that imports ``problem.py`` to load the data exactly as a past
    ``ramp-test`` run did (the report does); the variable is restored after.
    """
    previous = os.environ.get(QUICK_TEST_VARIABLE)
    os.environ[QUICK_TEST_VARIABLE] = "1" if quick else "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(QUICK_TEST_VARIABLE, None)
        else:
            os.environ[QUICK_TEST_VARIABLE] = previous
