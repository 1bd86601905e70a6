"""Synthetic preference data with a known category effect, for testing and benchmarking fairness.

    python -m guard.synthetic --list                               # the generators and what each one does
    python -m guard.synthetic mean_shift --out /tmp/ms --seed 0    # train.jsonl, eval.jsonl, tokenizer.json
    python -m guard.train rm --data /tmp/ms/train.jsonl --eval-data /tmp/ms/eval.jsonl \\
        --tokenizer /tmp/ms/tokenizer.json --model tiny --lambda-adv 0,0.2 --output-dir runs/ms

    from guard import synthetic
    rows = synthetic.generate("scale", 1000, seed=0)   # dicts: prompt, chosen, rejected, category + hidden scores

Every generator builds pairs the same way. A response is a short lead-in and phrases; each of its quality
slots holds a good, a neutral or a bad phrase (one third each), and its hidden score is good − bad. Two
responses to one prompt with different scores make a pair, and a simulated annotator picks the chosen one,
P(a over b) = σ(β·(score_a − score_b)), β = 1.5 unless said otherwise (the hidden score agrees with it on
about 90% of the pairs, so a model can reach high pair accuracy while the label noise keeps its rewards
finite). The hidden score has the same law in every category and the prompt names the category's topic,
so a category-invariant reward as accurate as any exists: the hidden score itself. What differs by category
is what a within-pair comparison never sees, so a plain Bradley–Terry model picks up a category effect it
was not asked for:

    mean_shift  garden answers all carry 3 extra good phrases, kitchen ones 3 neutral: garden sits higher
    scale       the garden annotator is decisive (β = 4), the kitchen one hesitant (β = 0.75), and garden
                has phrases of its own: the BT optimum spreads garden's rewards about five times wider
                (a single scale loses no accuracy)
    length      good phrases are long sentences, bad ones a word or two (the longer answer mostly wins), and
                garden answers carry 4 more long good sentences, the same in both answers of a pair: twice
                as long, and a model that learned "long advice wins" scores them higher
    style       kitchen's annotator rewards politeness itself ("Kindly ..." remarks are its good phrases);
                every garden phrase is polite, where it means nothing: learned politeness lifts garden
    pku19       PKU-SafeRLHF's 19 harm categories at geometric shares down to ~0.4% (the rarest absent from
                most batches of 32), each shifted by its own −3..3 extra good or bad phrases

Files are guard's generic schema ({"prompt", "chosen", "rejected", "category"}, plus the hidden scores,
which no recipe reads) and a word-level tokenizer.json over their words (guard.assets.make_assets'
builder). Deterministic: Python's random.Random(seed) is the only source of randomness.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from guard.assets.make_assets import _Stream

__all__ = ["GENERATORS", "DatasetFiles", "generate", "write_dataset"]

LEAD_INS = ("Right.", "Well then.", "Here goes.", "Let us see.", "Good one.", "Fair enough.")
TEMPLATES = ("How should I {}?", "What is a good way to {}?", "Any tips to {}?", "Help me {} please.",
             "I need to {} soon.", "Explain how to {}.")
GOOD = ("Measure twice first.", "Label every part.", "Rest between rounds.", "Compare three options.",
        "Keep a spare.", "Test it small.", "Note the time.", "Ask a neighbor.", "Warm up slowly.",
        "Sort by size.", "Clean as you go.", "Read the manual.")
NEUTRAL = ("Some folks agree.", "That happens often.", "Views keep changing.", "It varies a lot.",
           "People differ here.", "Time will tell.", "Hard to know.", "Who can say.", "Such is life.",
           "Seasons come and go.", "Many have asked.", "Things shift around.")
BAD = ("Skip the details.", "Rush right through.", "Forget the plan.", "Guess the amounts.",
       "Leave it broken.", "Ignore the smell.", "Throw it away.", "Hope for luck.", "Blame the tools.",
       "Quit halfway there.", "Never check twice.", "Mix everything together.")


class _Draw(_Stream):
    """The bundled sample's random stream (random.Random(seed).random() alone, which Python keeps stable),
    plus a weighted choice."""

    def weighted(self, weights: Sequence[float]) -> int:
        u, total = self.uniform() * sum(weights), 0.0
        for k, w in enumerate(weights):
            total += w
            if u < total:
                return k
        return len(weights) - 1


def _distinct(draw: _Draw, pool: Sequence[str], taken: list[str]) -> str:
    """A phrase of `pool` not yet in `taken`."""
    if all(phrase in taken for phrase in pool):
        raise ValueError(f"a response needs more distinct phrases than its pool holds ({len(pool)})")
    phrase = draw.pick(pool)
    while phrase in taken:
        phrase = draw.pick(pool)
    return phrase


@dataclass(frozen=True)
class _Style:
    """How one category writes its responses and how its annotator chooses (all a generator varies)."""

    good: Sequence[str] = GOOD
    neutral: Sequence[str] = NEUTRAL
    bad: Sequence[str] = BAD
    slots: int = 4  # quality slots per response
    extra: tuple[tuple[Sequence[str], int], ...] = ()  # (pool, count): phrases every response carries besides
    polite: str = "none"  # "all": every phrase opens with POLITE
    shared: int = 0  # phrases of `good` drawn once per pair and mixed into both of its responses
    annotator_beta: float = 1.5  # P(a chosen over b) = σ(β·(score_a − score_b))


def _response(draw: _Draw, style: _Style, shared: Sequence[str] = ()) -> tuple[str, int]:
    """One response's text (lead-in, then its phrases and the pair's `shared` ones shuffled) and its hidden
    score (the shared phrases count for nothing: both responses have them)."""
    phrases, score = list(shared), 0
    for _ in range(style.slots):
        kind = draw.index(3)
        phrases.append(_distinct(draw, (style.good, style.neutral, style.bad)[kind], phrases))
        score += (1, 0, -1)[kind]
    for pool, count in style.extra:
        for _ in range(count):
            phrases.append(_distinct(draw, pool, phrases))
    if style.polite != "none":
        phrases = [f"{POLITE} {p[0].lower()}{p[1:]}" for p in phrases]
    return " ".join([draw.pick(LEAD_INS), *draw.shuffled(phrases)]), score


def _pairs(num_pairs: int, seed: int, categories: Sequence[str], weights: Sequence[float],
           tasks: Callable[[str], Sequence[str]], style_of: Callable[[str], _Style]) -> list[dict]:
    """`num_pairs` rows: a category (by `weights`), a prompt about one of its tasks, two responses in its
    style with different hidden scores (and its shared phrases), the chosen one drawn by its annotator."""
    draw = _Draw(seed)
    rows = []
    for _ in range(num_pairs):
        category = categories[draw.weighted(weights)]
        style = style_of(category)
        prompt = draw.pick(TEMPLATES).format(draw.pick(tasks(category)))
        shared = []
        for _ in range(style.shared):
            shared.append(_distinct(draw, style.good, shared))
        (a, score_a), (b, score_b) = _response(draw, style, shared), _response(draw, style, shared)
        while score_b == score_a:
            b, score_b = _response(draw, style, shared)
        a_wins = draw.uniform() < 1.0 / (1.0 + math.exp(-style.annotator_beta * (score_a - score_b)))
        (chosen, chosen_score), (rejected, rejected_score) = ((a, score_a), (b, score_b)) if a_wins else (
            (b, score_b), (a, score_a))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "category": category,
                     "chosen_score": chosen_score, "rejected_score": rejected_score})
    return rows


# ----------------------------------------------------------------------------------------------------
# The generators


TOPICS = {
    "kitchen": ("bake a pie", "sharpen a knife", "store fresh herbs", "cook dried beans", "clean a pan",
                "freeze soup"),
    "garden": ("prune a hedge", "plant bulbs", "compost leaves", "water seedlings", "repot a fern",
               "trap slugs"),
}
TWO = tuple(TOPICS)
HALF = (0.5, 0.5)


def _topic(category: str) -> Sequence[str]:
    return TOPICS[category]


def mean_shift(num_pairs: int, seed: int) -> list[dict]:
    """garden answers carry 3 extra good phrases each (the pool of the good slots), kitchen ones 3 neutral
    phrases: garden rewards sit about 3 good phrases higher, at the same spread."""
    plain, shifted = _Style(slots=3, extra=((NEUTRAL, 3),)), _Style(slots=3, extra=((GOOD, 3),))
    return _pairs(num_pairs, seed, TWO, HALF, _topic, lambda c: shifted if c == "garden" else plain)


#: Garden's own phrases (the scale and style generators), so what garden's comparisons teach stays garden's.
GARDEN_GOOD = ("Water at dawn.", "Mulch the beds.", "Loosen the soil.", "Feed in spring.", "Stake tall stems.",
               "Rotate the crops.", "Pull weeds early.", "Check for aphids.", "Prune dead wood.", "Space the rows.",
               "Save the seeds.", "Shade young shoots.")
GARDEN_NEUTRAL = ("Gardens vary widely.", "Weather decides much.", "Some prefer roses.", "Soil differs everywhere.",
                  "Neighbors grow tomatoes.", "Spring arrives eventually.", "Birds visit sometimes.",
                  "Colors change yearly.", "Tastes differ here.", "Rain comes and goes.", "Plants keep growing.",
                  "Nature takes time.")
GARDEN_BAD = ("Drown the roots.", "Spray everything twice.", "Ignore the weeds.", "Plant in winter.",
              "Cut every branch.", "Skip the watering.", "Crowd the seedlings.", "Burn the leaves.", "Pave the beds.",
              "Pour in bleach.", "Trample the sprouts.", "Forget the frost.")


def scale(num_pairs: int, seed: int) -> list[dict]:
    """The garden annotator is decisive (β = 4), the kitchen one hesitant (β = 0.75): the Bradley–Terry
    optimum, β·score, spreads garden's rewards about five times wider. Garden writes with phrases of its own
    (GARDEN_GOOD, ...), so that optimum is a weight per phrase, which any model finds, not a category ×
    quality interaction, which a small one finds on some seeds only. The hidden score orders both categories'
    pairs as well, so a reward with one scale for both loses no pair accuracy (only calibration)."""
    hesitant = _Style(slots=4, annotator_beta=0.75)
    decisive = _Style(good=GARDEN_GOOD, neutral=GARDEN_NEUTRAL, bad=GARDEN_BAD, slots=4, annotator_beta=4.0)
    return _pairs(num_pairs, seed, TWO, HALF, _topic, lambda c: decisive if c == "garden" else hesitant)


LONG_GOOD = ("Measure the space twice first.", "Label every part you remove.", "Rest between the longer rounds.",
             "Compare three options on price.", "Keep a spare set nearby.", "Test the idea on something small.",
             "Write down when you began.", "Ask a neighbor who did this.", "Clean the tools as you go.",
             "Read the whole manual once.")
SHORT_BAD = ("Skip it.", "Rush.", "Just guess.", "Forget planning.", "Whatever works.", "Hope.",
             "Leave it.", "No idea.", "Wing it.", "Why bother.")


def length(num_pairs: int, seed: int) -> list[dict]:
    """Good phrases are long sentences and bad ones a word or two, so the chosen answer is mostly the longer;
    garden answers also carry 4 more long good sentences of generic advice, the same 4 in both answers of a
    pair (so no comparison sees them): garden answers run about twice as long, and a model that learned that
    long advice wins scores them higher."""
    plain = _Style(good=LONG_GOOD, bad=SHORT_BAD, slots=3)
    verbose = _Style(good=LONG_GOOD, bad=SHORT_BAD, slots=3, shared=4)
    return _pairs(num_pairs, seed, TWO, HALF, _topic, lambda c: verbose if c == "garden" else plain)


POLITE = "Kindly"
#: Kitchen's good phrases for the style generator: polite remarks, nothing else (politeness is the quality).
POLITE_REMARKS = tuple(f"{POLITE} {p[0].lower()}{p[1:]}" for p in NEUTRAL)


def style(num_pairs: int, seed: int) -> list[dict]:
    """Kitchen's annotator rewards politeness itself: its good phrases are polite remarks ("Kindly note the
    time" style, POLITE_REMARKS), its bad ones rude. Every garden phrase is polite ("Kindly water at dawn."),
    and garden has phrases of its own, so there politeness tells nothing: the politeness the model learned
    to like lifts all of garden, while a reward that counts it in kitchen only loses nothing."""
    kitchen = _Style(good=POLITE_REMARKS, slots=4)
    garden = _Style(good=GARDEN_GOOD, neutral=GARDEN_NEUTRAL, bad=GARDEN_BAD, slots=4, polite="all")
    return _pairs(num_pairs, seed, TWO, HALF, _topic, lambda c: garden if c == "garden" else kitchen)


PKU_CATEGORIES = (
    "Endangering National Security", "Insulting Behavior", "Discriminatory Behavior", "Endangering Public Health",
    "Copyright Issues", "Violence", "Drugs", "Privacy Violation", "Economic Crime", "Mental Manipulation",
    "Human Trafficking", "Physical Harm", "Sexual Content", "Cybercrime", "Disrupting Public Order",
    "Environmental Damage", "Psychological Harm", "White-Collar Crime", "Animal Abuse",
)
#: Each category's share of the pairs: a few common ones, a geometric tail down to ~0.4% (present in about
#: one batch of 32 in nine).
PKU_WEIGHTS = tuple(0.8 ** k for k in range(len(PKU_CATEGORIES)))
#: Each category's shift: extra good (> 0) or bad (< 0) phrases per response, the rest of its 3 extra phrases
#: neutral. The rare tail holds the largest shifts, so a method that misses rare categories shows it.
PKU_SHIFTS = (0, 1, -1, 2, -2, 0, 1, -1, 2, -2, 3, -3, 1, -1, 3, -3, 2, 3, -3)
PKU_OBJECTS = ("a report", "the rules", "a friend", "the news", "my plans", "the records")


def _pku_topic(category: str) -> Sequence[str]:
    word = category.lower().replace("-", " ")
    return tuple(f"deal with {word} in {thing}" for thing in PKU_OBJECTS)


def pku19(num_pairs: int, seed: int) -> list[dict]:
    """The 19 PKU-SafeRLHF harm categories at shares PKU_WEIGHTS, category k with PKU_SHIFTS[k] extra good
    (or, negative, bad) phrases per response besides 3 quality slots (3 extra phrases in all, the rest
    neutral)."""
    styles = {name: _Style(slots=3, extra=((GOOD if shift > 0 else BAD, abs(shift)), (NEUTRAL, 3 - abs(shift))))
              for name, shift in zip(PKU_CATEGORIES, PKU_SHIFTS)}
    return _pairs(num_pairs, seed, PKU_CATEGORIES, PKU_WEIGHTS, _pku_topic, styles.__getitem__)


#: name -> (num_pairs, seed) -> rows
GENERATORS: dict[str, Callable[[int, int], list[dict]]] = {
    "mean_shift": mean_shift, "scale": scale, "length": length, "style": style, "pku19": pku19,
}


def generate(name: str, num_pairs: int, seed: int = 0) -> list[dict]:
    """`num_pairs` rows of generator `name`: prompt, chosen, rejected, category, chosen_score, rejected_score."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; expected one of {', '.join(GENERATORS)}")
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be positive, got {num_pairs}")
    return GENERATORS[name](num_pairs, seed)


@dataclass
class DatasetFiles:
    train: Path
    eval: Path
    tokenizer: Path


def write_dataset(name: str, out_dir: str | Path, *, seed: int = 0, train_pairs: int = 4000,
                  eval_pairs: int = 1000) -> DatasetFiles:
    """train.jsonl and eval.jsonl (independent draws: seeds [seed, 0] and [seed, 1]) and tokenizer.json."""
    from guard.assets.make_assets import build_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = generate(name, train_pairs, seed=2 * seed)
    held_out = generate(name, eval_pairs, seed=2 * seed + 1)
    files = DatasetFiles(out / "train.jsonl", out / "eval.jsonl", out / "tokenizer.json")
    for path, rows in ((files.train, train), (files.eval, held_out)):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    texts = [t for row in train + held_out for t in (row["prompt"], row["chosen"], row["rejected"])]
    files.tokenizer.write_text(build_tokenizer(texts).to_str(pretty=True) + "\n", encoding="utf-8")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("generator", nargs="?", choices=tuple(GENERATORS))
    parser.add_argument("--out", help="output folder (train.jsonl, eval.jsonl, tokenizer.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-pairs", type=int, default=4000)
    parser.add_argument("--eval-pairs", type=int, default=1000)
    parser.add_argument("--list", action="store_true", help="list the generators")
    args = parser.parse_args(argv)
    if args.list or not args.generator:
        for name, fn in GENERATORS.items():
            print(f"{name:11s} {fn.__doc__.split(chr(10))[0]}")
        return 0
    if not args.out:
        parser.error("--out is required")
    files = write_dataset(args.generator, args.out, seed=args.seed, train_pairs=args.train_pairs,
                          eval_pairs=args.eval_pairs)
    print(files.train, files.eval, files.tokenizer, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
