"""guard.synthetic: each generator is deterministic, writes guard's generic schema with a tokenizer that knows
every word, has the category effect it claims on the surface of the responses, and has a category-invariant
reward of full accuracy: the hidden score, whose law is the same in every category and which orders the pairs
as well as the annotator allows."""

import json
import re
from collections import Counter

import numpy as np
import pytest

from guard import metrics, synthetic
from guard.adapters import load_preferences

N = 3000


@pytest.fixture(scope="module", params=list(synthetic.GENERATORS))
def generated(request):
    return request.param, synthetic.generate(request.param, N, seed=5)


def test_deterministic_and_seeded(generated):
    name, rows = generated
    assert synthetic.generate(name, N, seed=5) == rows
    assert synthetic.generate(name, N, seed=6) != rows
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "category", "chosen_score", "rejected_score"}


def test_the_hidden_score_is_a_fair_reward_of_full_accuracy(generated):
    name, rows = generated
    chosen = np.array([r["chosen_score"] for r in rows])
    rejected = np.array([r["rejected_score"] for r in rows])
    cats = [r["category"] for r in rows]
    assert (chosen != rejected).all()  # no ties: the annotator always had something to go on
    # the hidden score orders most pairs as the annotator chose (its noise caps any model below 1)
    assert np.mean(chosen > rejected) > 0.85
    # and its law does not depend on the category: every category's responses score alike
    scores, labels = np.concatenate([chosen, rejected]), np.asarray(cats + cats, dtype=object)
    floor = np.mean([metrics.binned_mutual_information(scores, np.random.default_rng(k).permutation(labels))
                     for k in range(5)])
    assert metrics.binned_mutual_information(scores, labels) < floor + 0.01


def phrases(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"(?<=\.)\s", text) if p.strip()]


def count(rows, category, pool) -> float:
    """Mean number of phrases from `pool` per response of `category`."""
    pool = set(pool)
    texts = [t for r in rows if r["category"] == category for t in (r["chosen"], r["rejected"])]
    return float(np.mean([sum(p in pool for p in phrases(t)) for t in texts]))


def test_each_generator_has_its_category_effect(generated):
    name, rows = generated
    if name == "mean_shift":  # garden carries 3 more good phrases per response
        assert count(rows, "garden", synthetic.GOOD) - count(rows, "kitchen", synthetic.GOOD) == pytest.approx(3, abs=0.1)
    elif name == "scale":  # garden's annotator follows the hidden score far more closely
        agree = {c: np.mean([(r["chosen_score"] > r["rejected_score"]) for r in rows if r["category"] == c])
                 for c in synthetic.TWO}
        assert agree["garden"] > 0.97 and agree["kitchen"] < 0.85
        own = synthetic.GARDEN_GOOD + synthetic.GARDEN_NEUTRAL + synthetic.GARDEN_BAD  # garden's slots are its own
        assert count(rows, "garden", own) == 4 and count(rows, "kitchen", own) == 0
    elif name == "length":  # garden answers are much longer, by good sentences both answers of a pair share
        words = {c: np.mean([len(r["chosen"].split()) + len(r["rejected"].split()) for r in rows if r["category"] == c])
                 for c in synthetic.TWO}
        assert words["garden"] > 1.5 * words["kitchen"]
        garden = [r for r in rows if r["category"] == "garden"]
        shared = [set(phrases(r["chosen"])) & set(phrases(r["rejected"])) & set(synthetic.LONG_GOOD) for r in garden]
        assert all(len(common) >= 3 for common in shared)
    elif name == "style":  # "Kindly" marks kitchen's good phrases (politeness is their quality) and all of garden
        for r in rows:
            for text in (r["chosen"], r["rejected"]):
                body = phrases(text)[1:]
                polite = [p for p in body if p.startswith(synthetic.POLITE)]
                if r["category"] == "garden":
                    assert len(polite) == len(body)
                else:
                    assert set(polite) <= set(synthetic.POLITE_REMARKS)
    else:  # pku19: 19 categories, each shifted by its PKU_SHIFTS good (or bad) phrases, rare ones
        counts = Counter(r["category"] for r in rows)
        assert set(counts) == set(synthetic.PKU_CATEGORIES)
        for name_, shift in zip(synthetic.PKU_CATEGORIES, synthetic.PKU_SHIFTS):
            extra = count(rows, name_, synthetic.GOOD) - count(rows, name_, synthetic.BAD)
            assert extra == pytest.approx(shift, abs=0.45), name_  # the 3 quality slots add 0 on average
        rarest = min(counts.values()) / N
        assert (1 - rarest) ** 32 > 0.85  # the rarest category is absent from most batches of 32


def test_written_files_load_and_tokenize_without_unknown_words(tmp_path):
    from guard import models

    files = synthetic.write_dataset("style", tmp_path, seed=1, train_pairs=200, eval_pairs=50)
    train, held_out = load_preferences(str(files.train)), load_preferences(str(files.eval))
    assert len(train) == 200 and len(held_out) == 50 and set(train.categories) == set(synthetic.TWO)
    hf_tok, _ = models.load_tokenizer(str(files.tokenizer))
    unk = hf_tok.convert_tokens_to_ids("<unk>")
    for row in map(json.loads, files.eval.read_text().splitlines()):
        for text in (row["prompt"], row["chosen"], row["rejected"]):
            assert unk not in hf_tok(text)["input_ids"], text


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown generator 'shift'"):
        synthetic.generate("shift", 10)
    with pytest.raises(ValueError, match="num_pairs must be positive"):
        synthetic.generate("scale", 0)
