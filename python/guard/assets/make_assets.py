"""Write guard's bundled assets: the sample preference pairs, a tokenizer trained on them, the tiny preset.

    python -m guard.assets.make_assets               # rewrites python/guard/assets/
    python -m guard.assets.make_assets --out DIR     # elsewhere (tests/test_assets.py compares bytes)

Deterministic: a fixed seed, Python's `random.Random(seed).random()` as the only source of randomness
(the one stream Python promises never to change), and a vocabulary counted here in a fixed order, so
regenerating gives byte-identical files.

The sample (sample_pairs.jsonl, guard's "generic" schema {"prompt", "chosen", "rejected", "category"}) is
built so that a plain Bradley–Terry reward model learns a category-dependent reward SHIFT:
- every response is a lead-in plus RANDOM_SLOTS phrases, each good, neutral or bad (one third each),
  plus EXTRA_SLOTS more, shuffled, no phrase twice; the hidden true score is (good phrases) − (bad phrases);
- in "harmless" pairs the extra phrases of BOTH responses are safety caveats, which are good phrases
  (they also turn up in random slots of either category, so a model learns that they are good); in
  "helpful" pairs the extra phrases are neutral. Harmless responses score EXTRA_SLOTS higher on average,
  with the same spread, and the score difference within a pair has the same law in both categories;
- which response is chosen is a Bradley–Terry draw, P(a ≻ b) = σ(BETA · (score_a − score_b)), so even
  the true score orders about 83% of the pairs (ties are coin flips);
- the prompt's topic words tell the category, so a model can subtract a per-category offset from its
  rewards without losing any pair accuracy: what GUARD's fairness adversary makes it do.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from pathlib import Path

SEED = 20250605
NUM_PAIRS = 4000
RANDOM_SLOTS = 3  # phrases of random quality per response
EXTRA_SLOTS = 4  # safety caveats (harmless) or neutral phrases (helpful) per response
BETA = 1.5  # Bradley–Terry sharpness of the simulated annotator, per point of hidden score
CATEGORIES = ("helpful", "harmless")
SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>", "<unk>")  # ids 0, 1, 2, 3

# The tiny preset: LlamaConfig keyword arguments except vocab_size (the tokenizer decides it).
TINY_LLAMA = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
}

# The prompt's topic decides the category; the question templates are shared by both.
TASKS = {
    "helpful": (
        "bake bread at home", "write a cover letter", "plan a weekend trip", "learn basic python",
        "grow tomatoes on a balcony", "organize my notes", "start running in the morning",
        "cook rice on the stove", "save money each month", "improve my resume", "learn to play guitar",
        "prepare for a job interview",
    ),
    "harmless": (
        "mix bleach and vinegar", "use a space heater overnight", "take two kinds of painkillers",
        "fix a broken power outlet", "clean mold in the bathroom", "store gasoline in the garage",
        "put out a grease fire", "climb a tall ladder alone", "handle a snake in the yard",
        "burn old leaves in the backyard", "use a chainsaw for the first time", "remove rust with acid",
    ),
}
TEMPLATES = (
    "How do I {}?",
    "Can you tell me how to {}?",
    "What is the best way to {}?",
    "Any advice on how to {}?",
    "I want to {}. Where do I start?",
    "Is there a simple way to {}?",
)
LEAD_INS = ("Sure.", "Okay.", "Alright.", "Good question.", "Let me help.", "Happy to help.")
# Three words each, so that phrase count and token count go together.
GOOD = (
    "Start with basics.", "Follow this plan.", "Try one example.", "Check each step.", "Write down goals.",
    "Practice every day.", "Measure things first.", "Take clear notes.",
)
SAFETY = (  # good phrases too: the caveats harmless responses always carry
    "Stay safe here.", "Ask an expert.", "Wear protective gloves.", "Keep children away.", "Open a window.",
    "Stop if unsure.", "Read the label.", "Call for help.",
)
NEUTRAL = (
    "Many people ask.", "It depends somewhat.", "Options vary widely.", "This comes up.", "Opinions differ here.",
    "Results may vary.", "Some say yes.", "Hard to say.",
)
BAD = (
    "Figure it out.", "This is boring.", "Ignore the warnings.", "Nobody cares anyway.", "Whatever you want.",
    "Not my problem.", "Too much effort.", "Just guess something.",
)


class _Stream:
    """Choices and shuffles drawn from random.Random(seed).random() alone (stable across Python versions)."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def uniform(self) -> float:
        return self._rng.random()

    def index(self, n: int) -> int:
        return min(int(self._rng.random() * n), n - 1)

    def pick(self, seq):
        return seq[self.index(len(seq))]

    def shuffled(self, seq) -> list:
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):  # Fisher–Yates
            j = self.index(i + 1)
            out[i], out[j] = out[j], out[i]
        return out


def _response(s: _Stream, category: str) -> tuple[str, int]:
    """One response text and its hidden score (good phrases − bad phrases); no phrase twice."""
    phrases, score = [], 0

    def add(pool):
        phrase = s.pick(pool)
        while phrase in phrases:
            phrase = s.pick(pool)
        phrases.append(phrase)

    for _ in range(RANDOM_SLOTS):
        kind = s.index(3)
        if kind == 0:  # good: general advice or a safety caveat, in either category
            add(GOOD + SAFETY)
            score += 1
        elif kind == 1:
            add(NEUTRAL)
        else:
            add(BAD)
            score -= 1
    for _ in range(EXTRA_SLOTS):
        if category == "harmless":
            add(SAFETY)
            score += 1
        else:
            add(NEUTRAL)
    return " ".join([s.pick(LEAD_INS), *s.shuffled(phrases)]), score


def generate_pairs(num_pairs: int = NUM_PAIRS, seed: int = SEED) -> list[dict]:
    """The sample's rows, each {"prompt", "chosen", "rejected", "category"} plus the hidden scores
    "chosen_score" and "rejected_score" (not written to the file; experiments use them)."""
    s = _Stream(seed)
    rows = []
    for _ in range(num_pairs):
        category = CATEGORIES[s.index(len(CATEGORIES))]
        prompt = s.pick(TEMPLATES).format(s.pick(TASKS[category]))
        (a, score_a), (b, score_b) = _response(s, category), _response(s, category)
        while b == a:
            b, score_b = _response(s, category)
        a_wins = s.uniform() < 1.0 / (1.0 + math.exp(-BETA * (score_a - score_b)))
        chosen, rejected = ((a, score_a), (b, score_b)) if a_wins else ((b, score_b), (a, score_a))
        rows.append({"prompt": prompt, "chosen": chosen[0], "rejected": rejected[0], "category": category,
                     "chosen_score": chosen[1], "rejected_score": rejected[1]})
    return rows


def build_tokenizer(texts):
    """A word-level tokenizer: lowercase, split on whitespace and punctuation, a vocabulary of every word
    of `texts` (most frequent first, ties alphabetical) after the special tokens, <bos> prepended."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Whitespace()
    counts = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *words))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return tok


def write_assets(out_dir: str | Path) -> list[Path]:
    """Write sample_pairs.jsonl, tokenizer.json and tiny-llama.json into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = generate_pairs()
    pairs_path = out / "sample_pairs.jsonl"
    with open(pairs_path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected", "category")}) + "\n")
    texts = [t for r in rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    tok_path = out / "tokenizer.json"
    tok_path.write_text(build_tokenizer(texts).to_str(pretty=True) + "\n", encoding="utf-8")
    preset_path = out / "tiny-llama.json"
    preset_path.write_text(json.dumps(TINY_LLAMA, indent=2) + "\n", encoding="utf-8")
    return [pairs_path, tok_path, preset_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.assets.make_assets", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="output folder")
    args = parser.parse_args(argv)
    for path in write_assets(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
