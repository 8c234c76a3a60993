"""One reading of RAMP_TEST_MODE for problem.py and every submission."""

import pytest

from atlas_ramp.testmode import is_quick_test


@pytest.mark.parametrize("value", ["1", "true", "yes", "quick", " 2 "])
def test_quick(value):
    assert is_quick_test({"RAMP_TEST_MODE": value})


@pytest.mark.parametrize("value", [None, "", "0", "false", "No", "OFF", " 0 "])
def test_full_run(value):
    environ = {} if value is None else {"RAMP_TEST_MODE": value}
    assert not is_quick_test(environ)


def test_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("RAMP_TEST_MODE", "1")
    assert is_quick_test()
    monkeypatch.delenv("RAMP_TEST_MODE")
    assert not is_quick_test()


def test_quick_test_mode_sets_and_restores(monkeypatch):
    from atlas_ramp.testmode import quick_test_mode

    monkeypatch.setenv("RAMP_TEST_MODE", "0")
    with quick_test_mode(True):
        assert is_quick_test()
    assert not is_quick_test()
    monkeypatch.delenv("RAMP_TEST_MODE")
    with quick_test_mode(False):
        assert not is_quick_test()
    assert "RAMP_TEST_MODE" not in __import__("os").environ
