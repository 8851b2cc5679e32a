"""Everything under tests/emulator/ runs the CUDA kernels in a CPU emulator (compiled with g++,
one host thread per GPU thread): minutes per file on 2 cores.  It is the slow suite: ``make
test-all`` (and CI) runs it, ``make test`` leaves it out."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/emulator/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
