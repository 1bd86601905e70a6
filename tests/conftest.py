"""Shared pytest setup: two CPU threads at most (the CI machine has 2 cores), and `gpu` tests skipped
where no CUDA device is present. Kernel tests run on the CPU under TRITON_INTERPRET=1, which the test
command in README.md sets."""

import os

os.environ.setdefault("RAYON_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
