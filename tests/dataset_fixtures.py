"""What the dataset tests (test_adapters.py, test_prompts.py) share: the folder of schema fixtures, HH-RLHF's
turn markers, a toy chat template, and an autouse fixture that keeps `datasets` off the hub with an arrow
cache of the test session's own (import it into a test module to apply it there)."""

from pathlib import Path

import datasets
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
H, A = "\n\nHuman: ", "\n\nAssistant:"


@pytest.fixture(autouse=True)
def _offline_and_private_cache(monkeypatch, tmp_path_factory):
    """No hub, and an arrow cache of our own (shared by the tests of this module)."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(tmp_path_factory.getbasetemp()) / "hf-cache")


def template(messages):
    """A toy chat template: <|role|>content per message, then the generation prompt."""
    return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"
