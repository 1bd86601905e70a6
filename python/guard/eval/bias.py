"""`python -m guard.eval bias`: a reward model's stereotype bias on CrowS-Pairs or StereoSet (GUARD Table 2).

    python -m guard.eval bias --reward-model runs/fair/model --baseline runs/plain/model \\
        --benchmark crows_pairs --data crows_pairs_anonymized.csv --output-dir OUT
    python -m guard.eval bias --reward-model runs/fair/model --benchmark stereoset --data dev.json --output-dir OUT

Each benchmark item is a pair of sentences, one expressing a stereotype and one its contrast
(guard/stereotypes.py reads CrowS-Pairs and StereoSet intrasentence in their published layouts). The reward
model scores --prompt + sentence for both (the prompt is empty by default), and the bias rate is the share of
pairs where it scores the stereotypical sentence higher (a tie counts as not preferring it): 50% is neutral.
Reported with its standard error sqrt(p(1 − p)/n), by bias type, and, with --baseline (a second reward model),
McNemar's test on the paired outcomes (exact binomial by default, --no-mcnemar-exact: chi-square with
continuity correction) over the pairs both models scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from guard import metrics, plots
from guard.adapters import CategoryMap, PreferenceSet
from guard.config import ConfigError, option
from guard.eval import common
from guard.report import Report
from guard.stereotypes import BENCHMARKS, HUB_NAMES, load_stereotype_pairs


@dataclass
class BiasConfig(common.EvalOptions):
    reward_model: str = option("", "the reward model: a directory (the rm recipe's OUTPUT_DIR/model) or hub name")
    baseline: str | None = option(None, "a second reward model, compared with McNemar's test")
    benchmark: str = option("crows_pairs", "the benchmark", choices=BENCHMARKS)
    data: str = option("", "the benchmark's data in its published layout (a local .csv/.json/.jsonl/.parquet); "
                       "default: its hub dataset")
    split: str | None = option(None, "dataset split (default: the benchmark's: crows_pairs test, stereoset "
                               "validation)")
    prompt: str = option("", "text placed before every sentence (the reward model scores prompt + sentence)")
    max_length: int = option(512, "tokens per prompt+sentence sequence", domain=">= 2")
    mcnemar_exact: bool = option(True, "McNemar's exact binomial test; --no-mcnemar-exact: chi-square with "
                                 "continuity correction")


def load_pairs(cfg: BiasConfig):
    """The benchmark's (stereotypical, anti-stereotypical) pairs as a PreferenceSet (chosen = the stereotypical
    sentence) with their bias types as categories, and the StereotypePairs they came from."""
    source = cfg.data or HUB_NAMES[cfg.benchmark]
    try:
        pairs = load_stereotype_pairs(source, cfg.benchmark, split=cfg.split)
    except (ValueError, OSError) as err:
        raise ConfigError(f"cannot read the {cfg.benchmark} data {source}: {str(err).splitlines()[0]}") from err
    if len(pairs) == 0:
        raise ConfigError(f"{source}: no usable {cfg.benchmark} pairs (rows read: {pairs.n_input}; set aside: "
                          f"{pairs.dropped or 'none'})")
    prefs = PreferenceSet([cfg.prompt] * len(pairs), list(pairs.stereotypical), list(pairs.anti_stereotypical),
                          categories=list(pairs.bias_types), source_rows=list(pairs.source_rows),
                          dropped={f"{cfg.benchmark}: {k}": v for k, v in pairs.dropped.items() if v},
                          n_input=pairs.n_input, schema=cfg.benchmark)
    return prefs, pairs


def rates(prefers: np.ndarray, groups: list[str]) -> dict:
    """The bias rate with its standard error, overall and by group."""
    rate, se = metrics.bias_rate(prefers)
    labels = np.asarray(groups, dtype=object)
    by = {}
    for g in sorted(set(groups)):
        r, s = metrics.bias_rate(prefers[labels == g])
        by[g] = {"n": int(np.sum(labels == g)), "rate": r, "se": s}
    return {"n": int(prefers.size), "rate": rate, "se": se, "distance_from_neutral": abs(rate - 0.5), "by_type": by}


def run(cfg: BiasConfig) -> dict:
    if not cfg.reward_model:
        raise ConfigError("--reward-model is required")
    with common.session(cfg) as (dist, out, autocast):
        from guard import models

        for path in (cfg.reward_model, cfg.baseline):
            if path:
                models.resolve_model(path)
        prefs, pairs = load_pairs(cfg)
        cmap = CategoryMap.from_labels(prefs.categories)
        scored = []
        for path in [cfg.reward_model] + ([cfg.baseline] if cfg.baseline else []):
            data, chosen, rejected = common.score_preferences(path, prefs, cmap, cfg, dist, autocast,
                                                              max_length=cfg.max_length, what=f"{cfg.benchmark} pairs")
            scored.append((data, chosen, rejected))
        if not dist.is_main:
            return {}
        # the pairs every model scored (a tokenizer may set some aside), in the same order
        kept = scored[0][0].rows
        for data, _, _ in scored[1:]:
            kept = np.intersect1d(kept, data.rows)
        outcomes, ties = [], []
        for data, chosen, rejected in scored:
            at = np.searchsorted(data.rows, kept)
            outcomes.append(chosen[at] > rejected[at])
            ties.append(int(np.sum(chosen[at] == rejected[at])))
        types = [prefs.categories[r] for r in kept]
        paths = [cfg.reward_model] + ([cfg.baseline] if cfg.baseline else [])
        labels = common.distinct_labels(paths, ["model", "baseline"][:len(paths)])
        by_model = []
        for (data, _, _), prefers, n_ties in zip(scored, outcomes, ties):
            r = rates(prefers, types)
            if cfg.benchmark == "crows_pairs":
                r["by_direction"] = rates(prefers, [pairs.directions[r_] for r_ in kept])["by_type"]
            by_model.append(r | {"ties": n_ties, "set_aside": data.set_aside})
        mcnemar = None
        if len(scored) > 1:
            mcnemar = metrics.mcnemar(outcomes[0], outcomes[1], exact=cfg.mcnemar_exact)
        results = {"command": "bias", "benchmark": cfg.benchmark, "config": asdict(cfg), "labels": labels,
                   "pairs": int(kept.size), "rows_read": pairs.n_input, "dropped": pairs.dropped,
                   "model": by_model[0], "baseline": by_model[1] if len(scored) > 1 else None, "mcnemar": mcnemar}
        rows = table(labels, by_model, mcnemar)
        report = Report(f"Stereotype bias on {cfg.benchmark} (GUARD Table 2)")
        report.text(f"Data `{cfg.data or HUB_NAMES[cfg.benchmark]}`: {pairs.n_input} rows read, {kept.size} pairs "
                    f"scored by every model (set aside: {pairs.dropped or 'none'}). Bias rate = share of pairs where "
                    "the reward model scores the stereotypical sentence higher; 50% is neutral; ± is the standard "
                    f"error. Prompt before each sentence: {cfg.prompt!r}.")
        report.table(rows)
        series = {label: {t: v["rate"] for t, v in r["by_type"].items()} for label, r in zip(labels, by_model)}
        errors = {label: {t: v["se"] for t, v in r["by_type"].items()} for label, r in zip(labels, by_model)}
        plots.category_bars(out / "bias_by_type.png", series, f"{cfg.benchmark}: bias rate by type (± SE)",
                            "share preferring the stereotype", errors=errors, reference=0.5)
        report.image("bias_by_type.png", "bias rate by type")
        for label, r in zip(labels, by_model):
            report.heading(f"{label}: by bias type", 3)
            report.table([{"type": t, **v} for t, v in r["by_type"].items()])
        common.finish(out, dist, results, report, rows)
        return results


def table(labels: list[str], by_model: list[dict], mcnemar: dict | None) -> list[dict]:
    rows = [{"metric": "bias rate", **{label: r["rate"] for label, r in zip(labels, by_model)}},
            {"metric": "standard error", **{label: r["se"] for label, r in zip(labels, by_model)}},
            {"metric": "|rate − 0.5|", **{label: r["distance_from_neutral"] for label, r in zip(labels, by_model)}},
            {"metric": "pairs", **{label: r["n"] for label, r in zip(labels, by_model)}}]
    if mcnemar is not None:
        rows += [{"metric": "McNemar statistic", labels[0]: mcnemar["statistic"]},
                 {"metric": "McNemar p-value", labels[0]: mcnemar["pvalue"]},
                 {"metric": f"stereotypical for {labels[0]} only", labels[0]: mcnemar["n10"]},
                 {"metric": f"stereotypical for {labels[1]} only", labels[0]: mcnemar["n01"]}]
    return rows


def main(argv: list[str] | None = None) -> int:
    run(common.parse_config(BiasConfig, argv, "python -m guard.eval bias", __doc__))
    return 0
