"""guard.data packing: best-fit-decreasing against a plain Python reference with the same tie rules,
the invariants (each index once, budget kept, pairs whole), efficiency on a realistic length
distribution, packed positions against numpy, and the padded / packed batches a trainer consumes."""

import bisect
import math

import numpy as np
import pytest

import guard.data as gd


def reference_bfd(costs, budget):
    """Best-fit-decreasing with a sorted list of (room left, batch): largest item first (ties by index),
    into the batch with the least room that still fits (ties: the batch opened first)."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    room, batches = [], []
    for i in order:
        k = bisect.bisect_left(room, (costs[i], -1))
        if k < len(room):
            left, b = room.pop(k)
            bisect.insort(room, (left - costs[i], b))
            batches[b].append(i)
        else:
            bisect.insort(room, (budget - costs[i], len(batches)))
            batches.append([i])
    return sorted((sorted(b) for b in batches), key=lambda b: b[0])


def lognormal_lengths(rng, n, mu=6.0, sigma=0.8, lo=50, hi=2000):
    return np.clip(np.round(rng.lognormal(mu, sigma, size=n)), lo, hi).astype(np.int64)


def check(costs, budget, batches):
    flat = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    assert sorted(flat.tolist()) == list(range(len(costs))), "every index exactly once"
    for b in batches:
        assert b.dtype == np.int64 and np.all(np.diff(b) > 0)
        assert costs[b].sum() <= budget
    assert [b[0] for b in batches] == sorted(b[0] for b in batches)


@pytest.mark.parametrize("seed", range(4))
def test_singles_match_reference(seed):
    rng = np.random.default_rng(seed)
    costs = rng.integers(0, 300, size=rng.integers(1, 3000))
    batches = gd.pack(costs, 1000, pairs=False)
    check(costs, 1000, batches)
    assert [b.tolist() for b in batches] == reference_bfd(costs.tolist(), 1000)


@pytest.mark.parametrize("seed", range(4))
def test_pairs_stay_whole_and_match_reference(seed):
    rng = np.random.default_rng(100 + seed)
    lengths = rng.integers(1, 400, size=(rng.integers(1, 2000), 2))
    batches = gd.pack(lengths, 2048)
    costs = lengths.sum(axis=1)
    check(costs, 2048, batches)  # the budget holds counting both sequences of every pair
    assert [b.tolist() for b in batches] == reference_bfd(costs.tolist(), 2048)


def test_deterministic_with_many_ties():
    lengths = np.array([[5, 5]] * 40 + [[3, 7]] * 40 + [[1, 1]] * 7)
    first = gd.pack(lengths, 30)
    for _ in range(3):
        assert [b.tolist() for b in gd.pack(lengths.copy(), 30)] == [b.tolist() for b in first]
    assert first[0].tolist() == [0, 1, 2]  # equal costs fill batches in index order


def test_efficiency_on_realistic_lengths():
    # Preference pairs whose chosen and rejected sequences are log-normal in 50..2000 tokens.
    rng = np.random.default_rng(7)
    lengths = np.stack([lognormal_lengths(rng, 8000), lognormal_lengths(rng, 8000)], axis=1)
    budget = 16384
    batches = gd.pack(lengths, budget)
    check(lengths.sum(axis=1), budget, batches)
    bound = math.ceil(lengths.sum() / budget)
    assert len(batches) <= bound / 0.98, (len(batches), bound)
    eff = gd.padding_efficiency(lengths, batches, budget)
    assert eff["budget_fill"] >= 0.98 * lengths.sum() / (bound * budget)
    assert eff["packed"] == 1.0 and 0 < eff["padded"] < 1


def test_over_budget_names_the_item():
    with pytest.raises(ValueError, match=r"item 2 has 11 tokens, more than max_tokens 10"):
        gd.pack([3, 4, 11, 12], 10, pairs=False)
    with pytest.raises(ValueError, match=r"pair 1 has 12 tokens \(chosen 5 \+ rejected 7\), more than max_tokens 10"):
        gd.pack([[1, 1], [5, 7]], 10)


def test_argument_errors():
    with pytest.raises(ValueError, match=r"pairs=True needs lengths of shape \[n, 2\]"):
        gd.pack([1, 2, 3], 10)
    with pytest.raises(ValueError, match=r"pairs=False needs lengths of shape \[n\]"):
        gd.pack([[1, 2]], 10, pairs=False)
    with pytest.raises(ValueError, match=r"lengths\[1\] is negative \(-2\)"):
        gd.pack([1, -2], 10, pairs=False)
    with pytest.raises(ValueError, match=r"lengths\[2, 1\] is negative \(-1\)"):  # pair 2's rejected length
        gd.pack([[5, 6], [7, 8], [9, -1]], 100)
    assert gd.padding_efficiency(np.zeros((0, 2), dtype=np.int64), [], 10) == {
        "packed": 0.0,
        "padded": 0.0,
        "budget_fill": 0.0,
    }
    with pytest.raises(TypeError, match="lengths must be integers"):
        gd.pack([1.5, 2.0], 10, pairs=False)
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        gd.pack([1], 0, pairs=False)
    assert gd.pack([], 10) == [] and gd.pack(np.zeros((0, 2), np.int64), 10) == []


def test_group_by_length_bounds_padding():
    rng = np.random.default_rng(21)
    lengths = np.stack([lognormal_lengths(rng, 5000), lognormal_lengths(rng, 5000)], axis=1)
    budget = 16384
    grouped = gd.group_by_length(lengths, budget)
    flat = np.concatenate(grouped)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in grouped:
        assert np.all(np.diff(b) > 0)
        assert 2 * len(b) * lengths[b].max() <= budget  # the padded batch fits the budget
    assert [b[0] for b in grouped] == sorted(b[0] for b in grouped)
    padded_grouped = gd.padding_efficiency(lengths, grouped, budget)["padded"]
    padded_packed = gd.padding_efficiency(lengths, gd.pack(lengths, budget), budget)["padded"]
    # Independent chosen and rejected lengths: a pair pads its shorter sequence, grouping or not.
    assert padded_grouped > padded_packed + 0.1
    single_lengths = lengths[:, 0]
    single = gd.group_by_length(single_lengths, budget, pairs=False)
    assert all(len(b) * single_lengths[b].max() <= budget for b in single)
    assert gd.padding_efficiency(single_lengths, single, budget)["padded"] > 0.95
    singles = gd.group_by_length([5, 1, 4, 4, 2], 8, pairs=False)
    assert [b.tolist() for b in singles] == [[0], [1, 4], [2, 3]]
    with pytest.raises(ValueError, match="item 1 needs 12 padded tokens, more than max_tokens 10"):
        gd.group_by_length([[1, 2], [6, 3]], 10)
    assert gd.group_by_length([], 10) == []


def test_packed_positions_match_numpy():
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 50, size=37)
    position_ids, cu_seqlens = gd.packed_positions(lengths)
    expected_positions = np.concatenate([np.arange(n) for n in lengths])
    expected_cu = np.concatenate([[0], np.cumsum(lengths)])
    assert position_ids.dtype == np.int64 and cu_seqlens.dtype == np.int32
    assert position_ids.tolist() == expected_positions.tolist()
    assert cu_seqlens.tolist() == expected_cu.tolist()
    empty_pos, empty_cu = gd.packed_positions([])
    assert empty_pos.size == 0 and empty_cu.tolist() == [0]


def test_padding_efficiency_by_hand():
    lengths = np.array([[3, 5], [2, 2], [4, 1]])
    batches = [np.array([0, 2]), np.array([1])]
    eff = gd.padding_efficiency(lengths, batches, max_tokens=20)
    tokens = 17
    assert eff["packed"] == 1.0  # packed rows are the tokens back to back: [1, 15] and [1, 4]
    # batch 0: 4 sequences padded to 5; batch 1: 2 sequences padded to 2
    assert eff["padded"] == pytest.approx(tokens / (4 * 5 + 2 * 2))
    assert eff["budget_fill"] == pytest.approx(tokens / (2 * 20))
    # pad_to_multiple_of=4 as padded_batch takes it: widths 8 and 4.
    rounded = gd.padding_efficiency(lengths, batches, max_tokens=20, pad_to_multiple_of=4)
    assert rounded["padded"] == pytest.approx(tokens / (4 * 8 + 2 * 4))
    assert rounded["packed"] == 1.0 and rounded["budget_fill"] == eff["budget_fill"]
    single = gd.padding_efficiency(np.array([3, 1, 2]), [np.array([0, 1]), np.array([2])], 4)
    assert single["padded"] == pytest.approx(6 / (2 * 3 + 1 * 2))
    assert single["budget_fill"] == pytest.approx(6 / (2 * 4))
    # Equal lengths leave nothing to pad; a full budget is full.
    full = gd.padding_efficiency(np.array([[4, 4], [4, 4]]), [np.array([0, 1])], 16)
    assert full == {"packed": 1.0, "padded": 1.0, "budget_fill": 1.0}
    # Two short pairs in a large budget: no padding lost in either layout to speak of, but the budget is
    # mostly empty (what the README example shows).
    few = gd.padding_efficiency(np.array([[10, 12], [11, 11]]), [np.array([0, 1])], 4096)
    assert few["padded"] == pytest.approx(44 / 48) and few["budget_fill"] == pytest.approx(44 / 4096)
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        gd.padding_efficiency(lengths, batches, 0)
    with pytest.raises(ValueError, match="pad_to_multiple_of must be a positive int or None"):
        gd.padding_efficiency(lengths, batches, 20, pad_to_multiple_of=0)


@pytest.mark.parametrize("multiple", [None, 8])
def test_padding_efficiency_counts_the_tensors_built(multiple):
    """The shares are those of the arrays padded_batch and packed_batch return, on random pairs and both
    ways of batching; packed >= padded always."""
    rng = np.random.default_rng(11)
    n = 60
    prompts, chosen, rejected = (rng.integers(lo, hi, n) for lo, hi in ((0, 30), (1, 40), (1, 25)))
    pairs = fake_pairs(prompts, chosen, rejected, seed=5)
    budget = 400
    for batches in (gd.pack(pairs.lengths, budget), gd.group_by_length(pairs.lengths, budget)):
        eff = gd.padding_efficiency(pairs.lengths, batches, budget, pad_to_multiple_of=multiple)
        real = padded_slots = packed_slots = 0
        for b in batches:
            padded = gd.padded_batch(pairs, b, pad_id=0, pad_to_multiple_of=multiple)
            real += int(padded["attention_mask"].sum())
            padded_slots += padded["input_ids"].size
            packed_slots += gd.packed_batch(pairs, b)["input_ids"].size
        assert real == pairs.lengths.sum()
        assert eff["padded"] == pytest.approx(real / padded_slots)
        assert eff["packed"] == pytest.approx(real / packed_slots) == 1.0
        assert eff["budget_fill"] == pytest.approx(real / (len(batches) * budget))
        assert eff["packed"] >= eff["padded"] and 0 < eff["budget_fill"] <= 1


def fake_pairs(prompt_lengths, chosen_lengths, rejected_lengths, vocab=50, seed=0):
    """EncodedPairs with random ids: the prompt part of a row's two sequences is shared."""
    rng = np.random.default_rng(seed)
    chosen, rejected, c_off, r_off = [], [], [0], [0]
    for p, c, r in zip(prompt_lengths, chosen_lengths, rejected_lengths):
        prompt = rng.integers(3, vocab, p)
        chosen.append(np.concatenate([prompt, rng.integers(3, vocab, c)]))
        rejected.append(np.concatenate([prompt, rng.integers(3, vocab, r)]))
        c_off.append(c_off[-1] + p + c)
        r_off.append(r_off[-1] + p + r)
    n = len(prompt_lengths)
    kept = np.arange(n, dtype=np.int64)
    as_ids = lambda parts: np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)  # noqa: E731
    return gd.EncodedPairs(
        chosen=gd.EncodedTexts(as_ids(chosen), np.array(c_off, np.int64), kept, {}),
        rejected=gd.EncodedTexts(as_ids(rejected), np.array(r_off, np.int64), kept, {}),
        chosen_prompt_lengths=np.array(prompt_lengths, np.int64),
        rejected_prompt_lengths=np.array(prompt_lengths, np.int64),
        kept=kept,
        dropped={},
    )


def test_padded_batch_for_pairs():
    pairs = fake_pairs([2, 0, 4], [3, 5, 1], [1, 2, 6])
    batch = gd.padded_batch(pairs, np.array([0, 2]), pad_id=-7, pad_to_multiple_of=8)
    ids, mask, completion, labels = (batch[k] for k in ("input_ids", "attention_mask", "completion_mask", "labels"))
    assert ids.shape == mask.shape == completion.shape == labels.shape == (4, 16)
    assert all(a.dtype == np.int64 for a in batch.values())
    rows = [pairs.chosen[0], pairs.chosen[2], pairs.rejected[0], pairs.rejected[2]]  # chosen first
    prompts = [2, 4, 2, 4]
    for k, (row, p) in enumerate(zip(rows, prompts)):
        n = len(row)
        assert ids[k, :n].tolist() == row.tolist() and np.all(ids[k, n:] == -7)
        assert mask[k].tolist() == [1] * n + [0] * (16 - n)
        assert completion[k].tolist() == [0] * p + [1] * (n - p) + [0] * (16 - n)
        assert labels[k].tolist() == [-100] * p + row[p:].tolist() + [-100] * (16 - n)
    plain = gd.padded_batch(pairs, [1], pad_id=0)
    assert plain["input_ids"].shape == (2, 5)  # longest of the pair's two sequences


def test_padded_batch_for_texts():
    pairs = fake_pairs([0, 0, 0], [3, 1, 2], [1, 1, 1])
    texts = pairs.chosen
    batch = gd.padded_batch(texts, [2, 0], pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [texts[2].tolist() + [0], texts[0].tolist()]
    assert batch["labels"].tolist() == [texts[2].tolist() + [-100], texts[0].tolist()]
    with pytest.raises(IndexError, match=r"row indices must be in \[0, 3\)"):
        gd.padded_batch(texts, [3], pad_id=0)
    with pytest.raises(TypeError, match="expected EncodedTexts or EncodedPairs"):
        gd.padded_batch([[1, 2]], [0], pad_id=0)


def test_packed_batch_for_pairs():
    pairs = fake_pairs([2, 0, 4], [3, 5, 1], [1, 2, 6])
    batch = gd.packed_batch(pairs, [0, 1, 2])
    seqs = [pairs.chosen[i] for i in range(3)] + [pairs.rejected[i] for i in range(3)]
    prompts = [2, 0, 4, 2, 0, 4]
    lengths = [len(s) for s in seqs]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["input_ids"][0].tolist() == np.concatenate(seqs).tolist()
    assert batch["cu_seqlens"].tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert batch["position_ids"][0].tolist() == np.concatenate([np.arange(n) for n in lengths]).tolist()
    assert batch["max_seqlen"] == max(lengths)
    expected_labels, expected_completion = [], []
    for s, p in zip(seqs, prompts):
        completion = np.arange(len(s)) >= p
        expected_completion += completion.astype(int).tolist()
        # -100 on the prompt and on the first token of each sequence (nothing before it predicts it)
        expected_labels += np.where(completion & (np.arange(len(s)) > 0), s, -100).tolist()
    assert batch["completion_mask"][0].tolist() == expected_completion
    assert batch["labels"][0].tolist() == expected_labels
    assert batch["labels"][0][0] == -100 and batch["labels"][0][lengths[0] + lengths[1]] == -100


def test_packed_batch_for_texts_masks_sequence_starts():
    texts = fake_pairs([0, 0], [3, 2], [1, 1]).chosen
    batch = gd.packed_batch(texts, [1, 0])
    ids = np.concatenate([texts[1], texts[0]]).tolist()
    assert batch["input_ids"][0].tolist() == ids
    assert batch["labels"][0].tolist() == [-100, ids[1], -100, ids[3], ids[4]]
    assert batch["cu_seqlens"].tolist() == [0, 2, 5] and "completion_mask" not in batch


def test_pack_then_batches_cover_everything():
    rng = np.random.default_rng(11)
    n = 300
    pairs = fake_pairs(rng.integers(0, 30, n), rng.integers(1, 60, n), rng.integers(1, 60, n), seed=5)
    budget = 512
    batches = gd.pack(pairs.lengths, budget)
    total = 0
    for b in batches:
        row = gd.packed_batch(pairs, b)
        assert row["input_ids"].shape[1] <= budget
        total += row["input_ids"].shape[1]
        padded = gd.padded_batch(pairs, b, pad_id=0)
        assert padded["attention_mask"].sum() == row["input_ids"].shape[1]
        assert padded["completion_mask"].sum() == row["completion_mask"].sum()
    assert total == pairs.lengths.sum()
