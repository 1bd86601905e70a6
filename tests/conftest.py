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


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Preference pairs a tiny policy learns in a few dozen steps (pref_data.synthetic_pairs)."""
    from pref_data import synthetic_pairs

    return synthetic_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")


@pytest.fixture(scope="module")
def two_dimensions(tmp_path_factory):
    """Two conflicting preference dimensions for SPO rounds (pref_data.two_dimension_pairs)."""
    from pref_data import two_dimension_pairs

    return two_dimension_pairs(tmp_path_factory.mktemp("spo") / "pairs.jsonl")
