"""Reward audit of a trained reward model: the per-pair rewards file and the GUARD summary statistics.

The trainer writes one line per evaluation pair to ``rewards.jsonl`` and prints :func:`reward_summary`
of those rewards; ``python -m guard.eval rewards --rewards rewards.jsonl`` reads the file back and must
print the same numbers, so the summary is a pure function of (chosen, rejected, categories, seed) taken as
float64, and the file stores every reward as a Python float whose repr round-trips exactly.

    from guard.audit import write_rewards_jsonl, read_rewards_jsonl, reward_summary

    write_rewards_jsonl("run/rewards.jsonl", categories, chosen, rejected)
    table = read_rewards_jsonl("run/rewards.jsonl")
    summary = reward_summary(table.chosen, table.rejected, table.categories, seed=0)
    print(summary["accuracy"], summary["ks"], summary["binned_mi"], summary["audit_auc"])
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from guard import metrics

__all__ = [
    "RewardTable",
    "write_rewards_jsonl",
    "read_rewards_jsonl",
    "rewards_by_category",
    "pairwise_distances",
    "category_distances",
    "reward_summary",
]

FIELDS = ("category", "chosen_reward", "rejected_reward")


@dataclass
class RewardTable:
    """The rows of a rewards.jsonl file, in file order: ``categories[i]`` is pair i's category name and
    ``chosen[i]`` / ``rejected[i]`` (float64) its rewards."""

    categories: list[str]
    chosen: np.ndarray
    rejected: np.ndarray

    def __len__(self) -> int:
        return len(self.categories)


def _float64(x: Any, name: str) -> np.ndarray:
    """1-D float64 copy of an array-like or tensor (any float dtype; float32 -> float64 is exact)."""
    if hasattr(x, "detach"):  # torch tensor, possibly bf16 / on a GPU
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} contains NaN or inf (first at index {int(bad[0])})")
    return arr


def _check_inputs(chosen: Any, rejected: Any, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validated float64 rewards and category names (plain str) of equal lengths (possibly 0)."""
    c = _float64(chosen, "chosen")
    r = _float64(rejected, "rejected")
    cats = list(categories)
    if not (len(c) == len(r) == len(cats)):
        raise ValueError(
            f"chosen, rejected and categories must have the same length (got {len(c)}, {len(r)} and {len(cats)})"
        )
    for i, name in enumerate(cats):
        if not isinstance(name, str):
            raise ValueError(f"categories[{i}] must be a string, got {type(name).__name__} {name!r}")
    return c, r, [str(name) for name in cats]  # np.str_ -> str so the summary is plain JSON


def write_rewards_jsonl(path: str | os.PathLike, categories: Sequence[str], chosen: Any, rejected: Any) -> Path:
    """Write one line per pair, ``{"category": str, "chosen_reward": float, "rejected_reward": float}``.

    Rewards are converted to float64 and written with Python's float repr, which round-trips exactly,
    so :func:`read_rewards_jsonl` gives back bit-identical values.  The file is written under a temporary
    name and renamed, so a reader never sees half of it.  ValueError on mismatched lengths, NaN/inf or a
    non-string category; an empty input writes an empty file.
    """
    c, r, cats = _check_inputs(chosen, rejected, categories)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        # .tolist() gives Python floats: json writes their repr, which round-trips exactly.
        for name, vc, vr in zip(cats, c.tolist(), r.tolist()):
            f.write(json.dumps({"category": name, "chosen_reward": vc, "rejected_reward": vr}) + "\n")
    os.replace(tmp, path)
    return path


def _parse_line(text: str) -> tuple[str, float, float]:
    """(category, chosen, rejected) of one line; ValueError with the reason (no location)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in FIELDS if k not in row]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(repr(k) for k in missing)}")
    category = row["category"]
    if not isinstance(category, str) or not category:
        raise ValueError(f"'category' must be a non-empty string, got {category!r}")
    values = []
    for key in FIELDS[1:]:
        v = row[key]
        # bool is an int subclass: true/false is a broken writer, not a reward.
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{key!r} must be a number, got {v!r}")
        v = float(v)
        if not math.isfinite(v):  # json accepts NaN / Infinity tokens
            raise ValueError(f"{key!r} must be finite, got {v!r}")
        values.append(v)
    return category, values[0], values[1]


def read_rewards_jsonl(path: str | os.PathLike) -> RewardTable:
    """Read a rewards.jsonl file written by :func:`write_rewards_jsonl` (extra keys are ignored, blank
    lines skipped).  A bad line raises ValueError ``"PATH line N: reason"`` (N counts from 1); a file
    with no rows raises ValueError ``"PATH: no reward rows"``."""
    path = Path(path)
    categories: list[str] = []
    chosen: list[float] = []
    rejected: list[float] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                category, vc, vr = _parse_line(line)
            except ValueError as exc:
                raise ValueError(f"{path} line {n}: {exc}") from None
            categories.append(category)
            chosen.append(vc)
            rejected.append(vr)
    if not categories:
        raise ValueError(f"{path}: no reward rows")
    return RewardTable(categories, np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64))


def rewards_by_category(chosen: Any, rejected: Any, categories: Sequence[str]) -> dict[str, np.ndarray]:
    """Each category's rewards (float64): its pairs' chosen rewards, then their rejected rewards, in file order;
    categories in sorted name order."""
    return _by_category(*_check_inputs(chosen, rejected, categories))


def _by_category(c: np.ndarray, r: np.ndarray, cats: list[str]) -> dict[str, np.ndarray]:
    names = np.asarray(cats, dtype=object)
    return {name: np.concatenate([c[names == name], r[names == name]]) for name in sorted(set(cats))}


def pairwise_distances(rewards_by_category: dict[str, Any]) -> list[dict[str, Any]]:
    """KS (statistic, two-sided p-value) and W1 between every pair of categories holding >= 2 rewards.

    Returns ``[{"a", "b", "ks", "ks_pvalue", "w1"}, ...]`` for the pairs a < b in sorted name order
    (``guard.metrics.ks_distance`` and ``wasserstein1``); categories with fewer than 2 rewards are left out.
    """
    groups = {name: _float64(v, f"rewards of {name!r}") for name, v in rewards_by_category.items()}
    names = sorted(name for name, v in groups.items() if v.shape[0] >= 2)
    out = []
    for a, b in itertools.combinations(names, 2):
        ks, p = metrics.ks_distance(groups[a], groups[b])
        out.append({"a": a, "b": b, "ks": ks, "ks_pvalue": p, "w1": metrics.wasserstein1(groups[a], groups[b])})
    return out


def category_distances(
    rewards_by_category: dict[str, Any], *, permutations: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """KS, W1 and a W1 permutation p-value between categories, pair by pair and each against the rest.

    Categories with fewer than 2 rewards are left out; the others are taken in sorted name order.  Rows:

    1. every pair a < b (the pairs of :func:`pairwise_distances`, same order and same ks/w1 numbers);
    2. when more than 2 categories take part, each category a against all the others pooled: ``"b"`` is
       ``"rest"`` and the rest sample is the other categories' rewards concatenated in sorted name order.

    Each row is ``{"kind", "a", "b", "n_a", "n_b", "ks", "ks_pvalue", "w1", "w1_pvalue"}`` (kind "pair" or "rest",
    so a category that is itself named "rest" is not mistaken for the pooled others): ``ks``/``ks_pvalue`` from
    ``guard.metrics.ks_distance``, ``w1`` from ``guard.metrics.wasserstein1`` and ``w1_pvalue`` from
    ``guard.metrics.permutation_pvalue(a_rewards, b_rewards, n_permutations=permutations, seed=row_seed)``
    (uncorrected for the number of rows), where for the row at 0-based position r of the returned list
    ``row_seed = int(np.random.SeedSequence([seed, r]).generate_state(1)[0])``.  ``permutations=0`` skips the
    permutation test (``w1_pvalue`` None).  Deterministic for a given seed.
    """
    for name, value in (("permutations", permutations), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    groups = {name: _float64(v, f"rewards of {name!r}") for name, v in rewards_by_category.items()}
    names = sorted(name for name, v in groups.items() if v.shape[0] >= 2)
    comparisons = [("pair", a, b, groups[a], groups[b]) for a, b in itertools.combinations(names, 2)]
    if len(names) > 2:
        for a in names:
            rest = np.concatenate([groups[other] for other in names if other != a])
            comparisons.append(("rest", a, "rest", groups[a], rest))
    out = []
    for r, (kind, a, b, xa, xb) in enumerate(comparisons):
        ks, p = metrics.ks_distance(xa, xb)
        w1_p = None
        if permutations > 0:
            row_seed = int(np.random.SeedSequence([int(seed), r]).generate_state(1)[0])
            w1_p = metrics.permutation_pvalue(xa, xb, n_permutations=int(permutations), seed=row_seed)
        out.append({"kind": kind, "a": a, "b": b, "n_a": int(xa.shape[0]), "n_b": int(xb.shape[0]), "ks": ks, "ks_pvalue": p,
                    "w1": metrics.wasserstein1(xa, xb), "w1_pvalue": w1_p})
    return out


def reward_summary(
    chosen: Any, rejected: Any, categories: Sequence[str], *, seed: int = 0, audit_folds: int = 5, bins: int = 50
) -> dict[str, Any]:
    """GUARD summary of a reward model's rewards on evaluation pairs (a JSON-ready dict).

    Inputs are taken as float64; pair i has rewards ``chosen[i]``, ``rejected[i]`` and category name
    ``categories[i]``.  "All rewards" below means the 2N rewards, all chosen then all rejected, each with
    its pair's category.  Keys:

    * ``n_pairs``: N.
    * ``accuracy``: share of pairs with chosen > rejected (a tie counts as wrong).
    * ``ks``, ``ks_pvalue``, ``w1``: two categories: the KS statistic, its p-value and Wasserstein-1
      between their reward distributions.  More: the maximum over all pairs of categories
      (:func:`pairwise_distances`); ``ks_pvalue`` belongs to the KS-worst pair (uncorrected for the
      number of pairs), and ``w1`` is the largest W1, which may come from another pair.
    * ``worst_pair``: ``[a, b]``, the two names (two categories) or the pair with the largest KS (ties:
      the first in sorted order).
    * ``binned_mi``: mutual information (nats) between all rewards cut into ``bins`` equal-width bins and
      the category (``guard.metrics.binned_mutual_information``).
    * ``audit_auc``, ``audit_auc_sd``, ``audit_balanced_accuracy``, ``audit_balanced_accuracy_sd``:
      ``guard.metrics.predictability_audit(all rewards, categories, folds=audit_folds, seed=seed)``
      (cross-validated mean and population sd over the folds), run on the categories with at least
      ``audit_folds`` rewards (stratified folds need one member per fold).
    * ``audit_excluded``: sorted names of the categories left out of the audit for that reason.
    * ``categories``: ``{name: {"count": pairs, "mean_reward": mean of its 2 * count rewards}}`` in sorted
      name order.

    Small inputs: a category with one pair still has 2 rewards and takes part in KS/W1/MI.  With a single
    category (nothing to compare) ``ks``, ``ks_pvalue``, ``w1``, ``worst_pair`` and ``binned_mi`` are
    None; the audit fields are None when fewer than 2 categories are large enough for it.
    Deterministic for a given seed.  ValueError on empty input, mismatched lengths, NaN/inf rewards or a
    non-string category.
    """
    for name, value, minimum in (("seed", seed, 0), ("audit_folds", audit_folds, 2), ("bins", bins, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    c, r, cats = _check_inputs(chosen, rejected, categories)
    if not cats:
        raise ValueError("no reward pairs (chosen, rejected and categories are empty)")
    rewards = np.concatenate([c, r])
    reward_cats = np.asarray(cats + cats, dtype=object)
    by_cat = _by_category(c, r, cats)
    names = list(by_cat)

    summary: dict[str, Any] = {"n_pairs": len(cats), "accuracy": float(np.mean(c > r))}

    pairs = pairwise_distances(by_cat)
    if pairs:
        worst = max(pairs, key=lambda p: p["ks"])  # max() keeps the first of equal keys
        summary.update(ks=worst["ks"], ks_pvalue=worst["ks_pvalue"], w1=max(p["w1"] for p in pairs),
                       worst_pair=[worst["a"], worst["b"]])
    else:
        summary.update(ks=None, ks_pvalue=None, w1=None, worst_pair=None)
    many = len(names) > 1
    summary["binned_mi"] = metrics.binned_mutual_information(rewards, reward_cats, bins=bins) if many else None

    excluded = [name for name in names if by_cat[name].shape[0] < audit_folds]
    keep = [name for name in names if name not in excluded]
    if len(keep) >= 2:
        mask = np.isin(reward_cats, keep)
        audit = metrics.predictability_audit(rewards[mask], reward_cats[mask], folds=audit_folds, seed=seed)
        summary.update(audit_auc=audit["auc_mean"], audit_auc_sd=audit["auc_std"],
                       audit_balanced_accuracy=audit["ba_mean"], audit_balanced_accuracy_sd=audit["ba_std"])
    else:
        summary.update(audit_auc=None, audit_auc_sd=None, audit_balanced_accuracy=None,
                       audit_balanced_accuracy_sd=None)
    summary["audit_excluded"] = excluded

    summary["categories"] = {
        name: {"count": int(by_cat[name].shape[0] // 2), "mean_reward": float(by_cat[name].mean())} for name in names
    }
    return summary
