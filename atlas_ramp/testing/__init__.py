"""Fixtures for the kit's tests and benchmarks, never used by the kit itself.

What a test needs that the kit must not ship as a feature lives here: archives
encrypted the way ATLAS's is (to test the installer without the real 10 GB
file) and trees in the layout of the ATLAS R2.0 release. Benchmarks import the
same code, so that what they measure is what the tests check.
"""
