"""The seeded config fuzz (tests/dual/test_config_fuzz.py) at 20,000 mutants per seed on
CPython: `make soak`."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "dual"))
import test_config_fuzz as fuzz  # noqa: E402


@pytest.mark.soak
@pytest.mark.parametrize("seed", [fuzz.SEED, 1, 0x2545F491])
def test_config_fuzz_soak(seed):
    bad = fuzz.run(20000, seed)
    assert 5000 < bad < 20000, bad
