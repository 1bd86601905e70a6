"""`python -m guard.eval parity`: the reward parity gap of a policy's responses between categories (GUARD B.1).

    python -m guard.eval parity --policy runs/ppo-fair/model --baseline-policy runs/ppo/model \\
        --scorer safety-rm/model --prompts hh_prompts.jsonl --per-category 100 --output-dir OUT

Each policy answers the same prompts with the same seed and sampling settings (GUARD appendix B: temperature
0.7, top-p 0.9, 256 new tokens), and one fixed reward model (--scorer) scores every answer. The parity gap is
the spread of the category means: |mean(A) − mean(B)| for two categories, max − min for more (every pair's
gap is listed too). With --baseline-policy the relative drop (gap − baseline gap) / baseline gap · 100% is
reported, and both policies answer exactly the same prompts.

Prompts: a prompt-only file (a `prompt` column, string or messages, and a `category`) or any preference
data (its distinct prompts, with their categories); --per-category N draws N of each category with --seed
(GUARD: 100 helpful + 100 harmless), --num-prompts N draws N in all. The answers and their scores are kept in
OUT/responses-policy.jsonl / responses-baseline.jsonl (--resume reuses them).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from guard import metrics, plots
from guard.config import ConfigError, option
from guard.eval import common
from guard.prompts import PROMPT_SCHEMAS
from guard.report import Report
from guard.train import inputs, options


@dataclass
class PromptOptions(common.EvalOptions):
    """The prompt and policy options parity and diversity share."""

    policy: str = option("", "the policy: a causal LM directory (e.g. a ppo or pref run's OUTPUT_DIR/model) or a "
                         "hub name")
    baseline_policy: str | None = option(None, "a second policy that answers the same prompts with the same seed "
                                         "and settings")
    prompts: str = option("", "prompts: a prompt-only .jsonl/.json/.parquet/.csv file (a prompt column, string or "
                          "messages, optional category), any preference data (its distinct prompts), a folder or "
                          "a hub name")
    schema: str = option("auto", "schema of --prompts (auto: detected; prompt: prompt-only rows)",
                         choices=PROMPT_SCHEMAS)
    split: str = option("train", "dataset split of --prompts")
    dimensions: list[str] | None = option(None, "preference data: only the prompts of these dimensions")
    categories: list[str] | None = option(None, "category names in order (default: those of --prompts)")
    num_prompts: int | None = option(None, "evaluate a fixed-seed sample of N prompts (default: all)", domain=">= 1")
    per_category: int | None = option(None, "evaluate a fixed-seed sample of N prompts of each category", domain=">= 1")
    max_prompt_length: int | None = option(512, "keep at most the last N prompt tokens", domain=">= 1")
    chat_template: str | None = option(None, "a Jinja chat template file for conversational prompts, when the "
                                       "policy's tokenizer has none")
    max_new_tokens: int = option(256, "longest response sampled", domain=">= 1")
    temperature: float = option(0.7, "sampling temperature", domain="> 0")
    top_p: float = option(0.9, "nucleus sampling: keep the smallest set of tokens with this probability",
                          domain="(0, 1]")


@dataclass
class ParityConfig(PromptOptions):
    scorer: str = option("", "the fixed reward model that scores every answer: a sequence-classification model "
                         "directory (e.g. the rm recipe's OUTPUT_DIR/model) or a hub name")


# ----------------------------------------------------------------------------------------------------
# Prompts and answers (shared with diversity)


def check_prompt_options(cfg: PromptOptions) -> None:
    if not cfg.policy:
        raise ConfigError("--policy is required (a causal LM directory or hub name)")
    if not cfg.prompts:
        raise ConfigError("--prompts is required")
    if cfg.num_prompts is not None and cfg.per_category is not None:
        raise ConfigError("give --num-prompts or --per-category, not both")
    for name in ("num_prompts", "per_category", "max_new_tokens"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if not (cfg.temperature > 0 and 0 < cfg.top_p <= 1):
        raise ConfigError(f"--temperature must be > 0 and --top-p in (0, 1], got {cfg.temperature} and {cfg.top_p}")


def load_prompts(cfg: PromptOptions):
    """(PromptSet, CategoryMap, positions to evaluate) of --prompts, rendered with the policy's chat template."""
    from guard import models
    from guard.prompts import load_prompts as load

    for path in (cfg.policy, cfg.baseline_policy):
        if path:
            models.resolve_model(path)
    hf_tok, _, _ = inputs.model_tokenizer(cfg.policy, None)
    prompts = inputs.load_pair_set(cfg.prompts, split=cfg.split, schema=cfg.schema, dimensions=cfg.dimensions,
                                         chat_template=inputs.chat_template_source(hf_tok, cfg.chat_template),
                                         tokenizer_name=f"the tokenizer of {cfg.policy}", what="prompts",
                                         loader=load, items="prompts")
    cmap = inputs.category_map(prompts, cfg.categories)
    rows = common.sample_prompts(prompts, cmap, num_prompts=cfg.num_prompts, per_category=cfg.per_category,
                                 seed=cfg.seed)
    return prompts, cmap, rows


def answer_all(cfg: PromptOptions, prompts, cmap, rows, dist, autocast: bool, out, scorer: str | None = None):
    """Every policy's answers (the policy first, then the baseline), restricted to the prompts all of them
    answered, in the same order: (labels, [Answers], prompt positions)."""
    settings = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p}
    policies = [(cfg.policy, "policy")] + ([(cfg.baseline_policy, "baseline")] if cfg.baseline_policy else [])
    answers = [common.answer_prompts(path, prompts, cmap, rows, settings, cfg, dist, autocast, out, role,
                                     scorer_path=scorer, max_prompt_length=cfg.max_prompt_length)
               for path, role in policies]
    kept, index = common.align(answers)
    answers = [a.select(i) for a, i in zip(answers, index)]
    labels = common.distinct_labels([p for p, _ in policies], [role for _, role in policies])
    return labels, answers, kept


# ----------------------------------------------------------------------------------------------------
# Analysis


def parity(scores: np.ndarray, names: list[str]) -> dict:
    """Mean score, the category means (n, mean, std, standard error), the parity gap (max − min of the category
    means; |a − b| for two) and every pair of categories' gap."""
    labels = np.asarray(names, dtype=object)
    cats = {}
    for c in dict.fromkeys(names):
        values = scores[labels == c]
        cats[c] = {"n": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
                   "se": float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else None}
    means = [v["mean"] for v in cats.values()]
    pair_gaps = [{"a": a, "b": b, "gap": metrics.parity_gap(scores[labels == a], scores[labels == b])}
                 for a, b in itertools.combinations(cats, 2)]
    return {"n": int(scores.size), "mean_score": float(scores.mean()), "parity_gap": float(max(means) - min(means)),
            "categories": cats, "pair_gaps": pair_gaps}


def run(cfg: ParityConfig) -> dict:
    check_prompt_options(cfg)
    if not cfg.scorer:
        raise ConfigError("--scorer is required (the reward model that scores every answer)")
    with common.session(cfg) as (dist, out, autocast):
        from guard import models

        models.resolve_model(cfg.scorer)
        prompts, cmap, rows = load_prompts(cfg)
        if len(cmap) < 2:
            raise ConfigError(f"the parity gap needs prompts of at least two categories; {cfg.prompts} has "
                              f"{list(cmap.names)} (give it a category column)")
        labels, answers, kept = answer_all(cfg, prompts, cmap, rows, dist, autocast, out, scorer=cfg.scorer)
        names = [prompts.categories[r] or inputs.NO_CATEGORY for r in kept]
        if len(set(names)) < 2:
            raise ConfigError(f"the parity gap needs answers in at least two categories; the evaluated prompts "
                              f"are all {names[0]!r}")
        if not dist.is_main:
            return {}
        results_by = [parity(a.scores, names) | {"no_stop_frac": float(1 - np.mean(a.ended))} for a in answers]
        for r, a in zip(results_by, answers):
            r["set_aside"] = a.set_aside
        relative = None
        if len(answers) > 1:
            base_gap = results_by[1]["parity_gap"]
            relative = None if base_gap == 0 else metrics.relative_drop(results_by[0]["parity_gap"], base_gap)
        results = {"command": "parity", "config": asdict(cfg), "labels": labels, "prompts": len(kept),
                   "policy": results_by[0], "baseline": results_by[1] if len(answers) > 1 else None,
                   "relative_drop_percent": relative}
        report = write_report(out, cfg, labels, results_by, relative, prompts, kept, answers)
        common.finish(out, dist, results, report, table(labels, results_by, relative))
        return results


def table(labels: list[str], results_by: list[dict], relative: float | None) -> list[dict]:
    rows = [{"metric": "parity gap", **{label: r["parity_gap"] for label, r in zip(labels, results_by)}},
            {"metric": "mean score", **{label: r["mean_score"] for label, r in zip(labels, results_by)}}]
    for c in results_by[0]["categories"]:
        rows.append({"metric": f"mean score: {c}", **{label: r["categories"][c]["mean"]
                                                      for label, r in zip(labels, results_by)}})
    rows.append({"metric": "no stop token (share)", **{label: r["no_stop_frac"] for label, r in zip(labels, results_by)}})
    if relative is not None:
        rows.append({"metric": "relative drop vs baseline (%)", labels[0]: relative})
    return rows


def write_report(out, cfg: ParityConfig, labels, results_by, relative, prompts, kept, answers) -> Report:
    report = Report("Reward parity between categories (GUARD B.1)")
    report.text(f"Scorer `{cfg.scorer}`; prompts `{cfg.prompts}` ({len(kept)} evaluated); seed {cfg.seed}, "
                f"temperature {cfg.temperature}, top-p {cfg.top_p}, {cfg.max_new_tokens} new tokens. Parity gap = "
                "max − min of the category mean scores.")
    report.table(table(labels, results_by, relative))
    series = {label: {c: v["mean"] for c, v in r["categories"].items()} for label, r in zip(labels, results_by)}
    errors = {label: {c: v["se"] or 0.0 for c, v in r["categories"].items()} for label, r in zip(labels, results_by)}
    plots.category_bars(out / "category_means.png", series, "mean score by category (± standard error)", "score",
                        errors=errors)
    report.image("category_means.png", "mean score by category")
    names = np.asarray([prompts.categories[r] or inputs.NO_CATEGORY for r in kept], dtype=object)
    for k, (label, a) in enumerate(zip(labels, answers)):
        file = f"scores_by_category_{k}.png"
        plots.reward_histograms(out / file, {c: a.scores[names == c] for c in dict.fromkeys(names)},
                                f"{label}: scores by category")
        report.image(file, f"{label}: scores by category")
        report.heading(f"{label}: gaps between pairs of categories", 3)
        report.table(results_by[k]["pair_gaps"])
    report.heading("Samples")
    report.table([{"category": names[i], "prompt": prompts.prompts[kept[i]][-200:],
                   **{label: a.responses[i][:200] for label, a in zip(labels, answers)}}
                  for i in range(min(5, len(kept)))])
    return report


def main(argv: list[str] | None = None) -> int:
    run(options.parse_config(ParityConfig, argv, "python -m guard.eval parity", __doc__))
    return 0
