"""Local data and fast settings shared by the preference recipe's tests (test_train_pref.py,
test_train_pref_runs.py): tiny-model flags, a jsonl writer and the two synthetic datasets (conftest.py
serves them as the fixtures `synthetic` and `two_dimensions`)."""

import random
from pathlib import Path

from guard import models
from guard.jsonfiles import write_jsonl

FAST = ["--model", "tiny", "--tokenizer", str(models.TINY_TOKENIZER), "--max-length", "48", "--batch-size", "8",
        "--eval-batch-size", "16", "--log-every", "1", "--lora-r", "8", "--lora-dropout", "0", "--lr", "1e-2",
        "--lr-schedule", "constant", "--warmup-ratio", "0", "--save-every", "0"]

WORDS = ("maybe", "later", "nobody", "cares", "hard", "to", "say", "it", "depends", "whatever", "too", "much")

A, B = "Stay safe here.", "Nobody cares much."


def synthetic_pairs(path: Path) -> Path:
    """Pairs where the chosen response is always the same short sentence and the rejected one is random words:
    a preference a tiny policy learns in a few dozen steps. Two categories, for the adversary."""
    rng = random.Random(0)
    rows = []
    for k in range(160):
        rejected = " ".join(rng.choice(WORDS) for _ in range(6)) + "."
        rows.append({"prompt": f"Question {k}: what now?", "chosen": A, "rejected": rejected,
                     "category": ("helpful", "harmless")[k % 2]})
    return write_jsonl(path, rows)


def two_dimension_pairs(path: Path) -> Path:
    """Two dimensions over the same two responses, each with label noise (so the preference optimum is
    finite): "first" prefers A in 80% of its pairs, "second" prefers B in 88%. Plain sequential DPO moves
    the A-vs-B log-ratio past what round 1 gave it (β·shift = logit 0.88 > logit 0.8); SPO's κ term with α = 0.9
    keeps round 1's (logit 0.88 − α·logit 0.8 < logit 0.8)."""
    rows = []
    for k in range(160):
        w, l = (A, B) if k % 5 else (B, A)
        rows.append({"prompt": f"Question {k}: what now?", "chosen": w, "rejected": l, "dimension": "first",
                     "category": ("helpful", "harmless")[k % 2]})
    for k in range(160):
        w, l = (B, A) if k % 25 < 22 else (A, B)
        rows.append({"prompt": f"Question {k}: what now?", "chosen": w, "rejected": l, "dimension": "second",
                     "category": ("helpful", "harmless")[k % 2]})
    return write_jsonl(path, rows)
