"""Sweep of guard's fairness methods on the synthetic generators (guard.synthetic): generator × method × λ × seed.

    python bench/bench_fairness.py                                   # defaults: every generator, the default method,
                                                                     # λ 0 and the default, seeds 0 1 2, 1 thread
    python bench/bench_fairness.py --generators mean_shift,scale --methods adversary,moments --lambdas 0,0.2,0.8
    python bench/bench_fairness.py --recipe pref --generators mean_shift,style     # fairness on implicit rewards
    python bench/bench_fairness.py --threads 2 --out bench/results/fairness-threads2-cpu-2026-12-05.md
    python bench/bench_fairness.py --set adv_steps=5 --set adv_lr=0.003          # any config field, every run
    python bench/bench_fairness.py --compare threads1.json threads2.json --out bench/results/fairness-threads-...

Each (generator, seed) writes its data with guard.synthetic.write_dataset (seed s: data seed s, training
seed s), then runs the recipe in-process (guard.train.rm.run or guard.train.pref.run) with the default job's
settings (guard.train.__main__.default_job_config: the tiny preset, 3 epochs, batch 32, lr 2e-3) once per
method, with every λ of --lambdas on the same initial weights and batch order. λ = 0 ignores the method
(the adversary only watches), so it is run once per (generator, seed) and shared by every method.

Prints one row per (generator, method, λ, seed) — held-out pair accuracy, BT loss, binned MI, KS, W1,
audit AUC — then, per (generator, method, λ > 0), the worst case over seeds of the checks issue 18 asks
for: MI ratio to λ = 0 (≤ 0.5), audit AUC (≤ 0.6), accuracy drop from λ = 0 (≤ 0.02). --out writes the
tables as markdown, the rows as .json beside it, and a plot as .png. Runs go under --work (outside the repo).
--compare reads two sweeps' .json (e.g. 1 and 2 threads) and says, per check, how far their worst cases
lie apart against THREAD_TOLERANCE and whether every verdict is the same; it runs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import fields, replace
from datetime import date
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm: it reads the variable at import

#: Named methods: config overrides on top of the recipe's defaults (a field absent from the config is an error).
METHODS: dict[str, dict] = {
    "default": {},
    # GUARD's adversary as the paper describes it (appendix A.6): per-category moments, maximise its CE, one
    # Adam step per model step
    "adv-paper": {"fairness": "adversary", "adversary": "moments", "adv_objective": "ce", "adv_steps": 1},
    "adv-moments-entropy": {"fairness": "adversary", "adversary": "moments", "adv_objective": "entropy"},
    # the adversary reading each pair's rewards (the paper's main text; guard's default before issue 18)
    "adv-rewards-ce": {"fairness": "adversary", "adversary": "rewards", "adv_objective": "ce", "adv_steps": 1},
    "adv-rewards-ce-5": {"fairness": "adversary", "adversary": "rewards", "adv_objective": "ce", "adv_steps": 5},
    "adv-rewards-entropy": {"fairness": "adversary", "adversary": "rewards", "adv_objective": "entropy"},
    "adv-rewards-chance": {"fairness": "adversary", "adversary": "rewards", "adv_objective": "chance"},
    "adv-rewards-chance-5": {"fairness": "adversary", "adversary": "rewards", "adv_objective": "chance",
                             "adv_steps": 5},
    "moments-mean": {"fairness": "moments", "moment_weights": [1.0, 0.0, 0.0, 0.0]},
    "moments-mean-var": {"fairness": "moments", "moment_weights": [1.0, 1.0, 0.0, 0.0]},
    "moments-all": {"fairness": "moments", "moment_weights": [1.0, 1.0, 1.0, 1.0]},
    "moments-balanced": {"fairness": "moments", "moment_weights": [1.0, 1.0, 0.0, 0.0], "balanced_batches": True},
    "adv-rewards-ce-balanced": {"fairness": "adversary", "adversary": "rewards", "adv_objective": "ce",
                                "adv_steps": 1, "balanced_batches": True},
    "moments-x4": {"fairness": "moments", "moment_weights": [4.0, 4.0, 0.0, 0.0]},
    "moments-x4-balanced": {"fairness": "moments", "moment_weights": [4.0, 4.0, 0.0, 0.0], "balanced_batches": True},
    "moments-x4+adv-ce-balanced": {"fairness": "moments+adversary", "moment_weights": [4.0, 4.0, 0.0, 0.0],
                                   "adversary": "rewards", "adv_objective": "ce", "balanced_batches": True},
    "moments+adv-chance": {"fairness": "moments+adversary", "adversary": "rewards", "adv_objective": "chance"},
}
CHECKS = {"mi_ratio": 0.5, "audit_auc": 0.6, "accuracy_drop": 0.02}
METRICS = ("accuracy", "bt_loss", "binned_mi", "ks", "w1", "audit_auc")
#: How far two sweeps of the same runs (1 and 2 threads) may put a worst case apart and still agree: float32
#: round-off in another reduction order moves every step a little, so the runs differ like nearby seeds.
THREAD_TOLERANCE = {"mi_ratio": 0.1, "audit_auc": 0.03, "accuracy_drop": 0.01}


def parse_list(text: str, kind=str) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "," in text:
        return [parse_value(x) for x in text.split(",")]
    return text


def recipe_config(recipe: str, files, seed: int, lambdas: list[float], out: Path, overrides: dict):
    """The recipe's config for one (generator, seed, method): the default job's settings on this data."""
    import torch

    from guard.train import __main__ as train_main
    from guard.train import pref

    base = train_main.default_job_config(str(out))
    common_fields = dict(data=str(files.train), eval_data=str(files.eval), tokenizer=str(files.tokenizer),
                         model="tiny", max_length=base.max_length, epochs=base.epochs, batch_size=base.batch_size,
                         lr=base.lr, warmup_ratio=base.warmup_ratio, max_grad_norm=base.max_grad_norm,
                         log_every=50, save_every=0, output_dir=str(out), overwrite=True,
                         seed=seed, threads=torch.get_num_threads())  # --threads
    if recipe == "rm":
        cfg = replace(base, **common_fields, lambda_adv=lambdas)
    else:  # pref: DPO with LoRA off (the tiny policy trains in full), one λ per run
        cfg = replace(pref.PrefConfig(), **common_fields, lora=False, lambda_adv=lambdas[0], beta=0.1,
                      eval_batch_size=64, lr_schedule="cosine")
    known = {f.name for f in fields(cfg)} - {"lambda_adv"}  # λ comes from --lambdas
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SystemExit(f"error: {unknown} are not settings of the {recipe} recipe a sweep can change")
    return replace(cfg, **overrides)


def run_recipe(recipe: str, files, seed: int, lambdas: list[float], out: Path, overrides: dict) -> list[dict]:
    """Summaries (one per λ) of the recipe run in-process; its printing is swallowed."""
    from guard.train import pref, rm

    quiet = io.StringIO()  # the recipe's tables and progress bars (tqdm writes to stderr)
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        if recipe == "rm":
            return rm.run(recipe_config(recipe, files, seed, lambdas, out, overrides))
        summaries = []
        for lam in lambdas:
            cfg = recipe_config(recipe, files, seed, [lam], out / f"lambda-{lam:g}", overrides)
            summaries.append(with_bt_loss(pref.run(cfg), Path(cfg.output_dir)))
        return summaries


#: The config fields a fairness method sets; a run folder is named by their effective values.
FAIRNESS_FIELDS = ("fairness", "moment_weights", "balanced_batches", "adversary",
                   "adv_objective", "adv_steps", "adv_hidden", "adv_lr")


def settings_dir(method: str, cfg, settings: dict, lambdas: list[float]) -> str:
    """A run folder's name: the method and a hash of the data, the run's effective fairness settings, the other
    settings given and λ, so changed data, a changed default or setting never reuses an old run."""
    effective = {f: getattr(cfg, f) for f in FAIRNESS_FIELDS if hasattr(cfg, f)}
    digest = hashlib.sha256(json.dumps([effective, settings, lambdas], sort_keys=True).encode())
    for path in (cfg.data, cfg.eval_data):
        digest.update(Path(path).read_bytes())
    digest = digest.hexdigest()[:8]
    return f"{method}-{digest}"


def with_bt_loss(summary: dict, run_dir: Path) -> dict:
    """The summary with its rewards' Bradley–Terry loss (the pref recipe's summary has none: for implicit
    rewards it is the DPO loss at β), from the run's rewards.jsonl."""
    if summary.get("bt_loss") is not None:
        return summary
    from guard import audit

    table = audit.read_rewards_jsonl(run_dir / "rewards.jsonl")
    return {**summary, "bt_loss": float(np.mean(np.logaddexp(0.0, table.rejected - table.chosen)))}


def load_summaries(out: Path, lambdas: list[float]) -> list[dict] | None:
    """The summaries of a finished run of these λ in `out`, or None."""
    paths = [out / "summary.json"] if len(lambdas) == 1 else [out / f"lambda-{lam:g}" / "summary.json"
                                                               for lam in lambdas]
    if len(lambdas) == 1 and not paths[0].exists():
        paths = [out / f"lambda-{lambdas[0]:g}" / "summary.json"]
    if not all(p.exists() for p in paths):
        return None
    return [with_bt_loss(json.loads(p.read_text()), p.parent) for p in paths]


@contextlib.contextmanager
def tracing(trace: list[dict]):
    """Record, at every fairness step of the runs inside, the batch's category statistics the penalty sees:
    the standardised gap between the pooled means of categories 1 and 0 (signed: a sign flip is an
    overshoot), the log-ratio of their variances, η² of the means (moment_penalty's first term) and the
    adversary's loss."""
    from guard import fairness

    original = fairness.Fairness.__call__

    def traced(self, loss, lambda_adv, moments, counts, chosen, rejected, categories):
        result = original(self, loss, lambda_adv, moments, counts, chosen, rejected, categories)
        pooled = fairness.pooled_moments(moments.detach()).double()
        mean, var = pooled[:, 0], pooled[:, 1]
        both = bool(counts[0] > 1 and counts[1] > 1)
        trace.append({"step": len(trace) + 1, "adv_loss": result[1].item(),
                      "eta2": fairness.moment_penalty(moments.detach(), counts, (1, 0, 0, 0)).item(),
                      "gap": ((mean[1] - mean[0]) / ((var[0] + var[1]) / 2).sqrt()).item() if both else None,
                      "log_var_ratio": (var[1] / var[0]).log().item() if both else None})
        return result

    fairness.Fairness.__call__ = traced
    try:
        yield
    finally:
        fairness.Fairness.__call__ = original


def sweep(args) -> list[dict]:
    from guard import synthetic

    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    rows = []
    work = Path(args.work)
    for generator in args.generators:
        for seed in args.seeds:
            files = synthetic.write_dataset(generator, work / "data" / f"{generator}-{seed}", seed=seed,
                                            train_pairs=args.train_pairs or (8000 if generator == "pku19" else 4000),
                                            eval_pairs=args.eval_pairs or (6000 if generator == "pku19" else 2000))
            positive = [lam for lam in args.lambdas if lam > 0]
            plan = [("-", [0.0])] if 0.0 in args.lambdas else []
            plan += [(method, positive) for method in args.methods] if positive else []
            for method, lambdas in plan:
                started = time.perf_counter()
                # λ = 0 ignores the method (only --set settings that change plain training, e.g. the batches)
                settings = overrides if method == "-" else {**METHODS[method], **overrides}
                probe = recipe_config(args.recipe, files, seed, lambdas, work, settings)
                out = (work / "runs" / args.recipe / generator / f"seed-{seed}" / f"threads-{args.threads}" /
                       settings_dir(method, probe, settings, lambdas))
                summaries = None if args.fresh or args.trace else load_summaries(out, lambdas)
                trace: list[dict] = []
                if summaries is None:
                    with tracing(trace) if args.trace else contextlib.nullcontext():
                        summaries = run_recipe(args.recipe, files, seed, lambdas, out, settings)
                for lam, s in zip(lambdas, summaries):
                    row = {"recipe": args.recipe, "generator": generator, "method": method, "lambda": lam,
                           "seed": seed, "threads": args.threads, **{k: s.get(k) for k in METRICS},
                           "seconds": round((time.perf_counter() - started) / len(lambdas), 1)}
                    if trace:  # one λ per traced run: the steps of every λ in order
                        steps = len(trace) // len(lambdas)
                        k = lambdas.index(lam)
                        row["trace"] = trace[k * steps:(k + 1) * steps]
                    rows.append(row)
                    print(format_row(row), flush=True)
    return rows


HEADER = ("generator", "method", "lambda", "seed", "accuracy", "bt_loss", "binned_mi", "ks", "w1", "audit_auc")


def format_row(row: dict) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return " | ".join(cell(row.get(k)) for k in HEADER)


def worst_cases(rows: list[dict]) -> list[dict]:
    """Per (generator, method, λ > 0): the worst seed for each check against the same seed's λ = 0."""
    base = {(r["generator"], r["seed"]): r for r in rows if r["lambda"] == 0}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["lambda"] > 0 and (r["generator"], r["seed"]) in base:
            groups.setdefault((r["generator"], r["method"], r["lambda"]), []).append(r)
    out = []
    for (generator, method, lam), runs in groups.items():
        ratios = [r["binned_mi"] / base[(generator, r["seed"])]["binned_mi"] for r in runs]
        drops = [base[(generator, r["seed"])]["accuracy"] - r["accuracy"] for r in runs]
        aucs = [r["audit_auc"] for r in runs]
        worst = {"mi_ratio": max(ratios), "audit_auc": max(aucs), "accuracy_drop": max(drops)}
        out.append({"generator": generator, "method": method, "lambda": lam, "seeds": len(runs),
                    "base_mi_min": min(base[(generator, r["seed"])]["binned_mi"] for r in runs),
                    "base_auc_min": min(base[(generator, r["seed"])]["audit_auc"] for r in runs),
                    "base_acc_min": min(base[(generator, r["seed"])]["accuracy"] for r in runs),
                    **{f"worst_{k}": v for k, v in worst.items()},
                    "pass": all(worst[k] <= limit for k, limit in CHECKS.items())})
    return out


def compare(first: dict, second: dict) -> tuple[bool, str]:
    """Two sweeps' results (their "rows", as --out writes them) of the same plan: whether they agree (every
    verdict the same, every worst case within THREAD_TOLERANCE) and a markdown report saying so."""

    def key(r: dict) -> tuple:
        return r["generator"], r["method"], r["lambda"]

    runs = {(*key(r), r["seed"]): r for r in second["rows"]}
    if (sorted(runs) != sorted((*key(r), r["seed"]) for r in first["rows"])
            or {r["recipe"] for r in first["rows"]} != {r["recipe"] for r in second["rows"]}):
        raise ValueError("the two sweeps ran different plans (recipe, generators, methods, λs or seeds)")
    second_worst = {key(w): w for w in worst_cases(second["rows"])}  # the same plan: the same groups
    pairs = [(w, second_worst[key(w)]) for w in worst_cases(first["rows"])]
    deltas = {m: max(abs(r[m] - runs[(*key(r), r["seed"])][m]) for r in first["rows"]) for m in METRICS}
    lines = ["| generator | method | λ | " + " | ".join(f"worst {k.replace('_', ' ')} (a / b)" for k in CHECKS)
             + " | pass (a / b) |", "|" + " --- |" * (4 + len(CHECKS))]
    agree = True
    for a, b in pairs:
        cells = []
        for check, tolerance in THREAD_TOLERANCE.items():
            gap = abs(a[f"worst_{check}"] - b[f"worst_{check}"])
            agree &= gap <= tolerance
            cells.append(f"{a[f'worst_{check}']:.3f} / {b[f'worst_{check}']:.3f}" + ("" if gap <= tolerance else " (!)"))
        agree &= a["pass"] == b["pass"]
        verdicts = " / ".join("yes" if w["pass"] else "NO" for w in (a, b))
        lines.append(f"| {a['generator']} | {a['method']} | {a['lambda']:g} | " + " | ".join(cells) + f" | {verdicts} |")
    tolerance = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in THREAD_TOLERANCE.items())
    summary = (f"Agree: the same verdict on every row and every worst case within the tolerance ({tolerance})"
               if agree else
               f"DISAGREE: a verdict differs or a worst case lies outside the tolerance ({tolerance}; marked (!))")
    lines += ["", summary + ".", "", "Largest difference of one run between the sweeps (same generator, method, λ, "
              "seed): " + ", ".join(f"{m} {d:.4f}" for m, d in deltas.items()) + "."]
    return agree, "\n".join(lines) + "\n"


def markdown(rows: list[dict], worst: list[dict], args, elapsed: float) -> str:
    lines = [f"# Fairness sweep ({args.recipe}), {args.machine}, {date.today().isoformat()}", "",
             f"`python bench/bench_fairness.py {shlex.join(sys.argv[1:])}` — torch threads {args.threads}, "
             f"{elapsed / 60:.1f} min. Held-out pairs of each generator (guard.synthetic), the default job's "
             "training settings (tiny preset, 3 epochs, batch 32, lr 2e-3).", "",
             "## Worst case over seeds (checks: MI ratio ≤ 0.5, audit AUC ≤ 0.6, accuracy drop ≤ 0.02)", "",
             "| generator | method | λ | seeds | λ=0 MI (min) | λ=0 AUC (min) | λ=0 acc (min) | worst MI ratio | "
             "worst audit AUC | worst acc drop | pass |", "|" + " --- |" * 11]
    for w in worst:
        lines.append(f"| {w['generator']} | {w['method']} | {w['lambda']:g} | {w['seeds']} | {w['base_mi_min']:.3f} | "
                     f"{w['base_auc_min']:.3f} | {w['base_acc_min']:.3f} | {w['worst_mi_ratio']:.3f} | "
                     f"{w['worst_audit_auc']:.3f} | {w['worst_accuracy_drop']:+.3f} | {'yes' if w['pass'] else 'NO'} |")
    lines += ["", "## Every run", "", "| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + format_row(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[dict]) -> None:
    """Per generator: binned MI and audit AUC of every run, λ = 0 against each method's λ > 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generators = list(dict.fromkeys(r["generator"] for r in rows))
    labels = list(dict.fromkeys(f"{r['method']} λ={r['lambda']:g}" if r["lambda"] > 0 else "λ=0" for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "binned_mi", "held-out binned MI (nats)"), (axes[1], "audit_auc", "audit AUC")):
        width = 0.8 / max(1, len(labels))
        for k, label in enumerate(labels):
            for g, generator in enumerate(generators):
                vals = [r[key] for r in rows if r["generator"] == generator and
                        (f"{r['method']} λ={r['lambda']:g}" if r["lambda"] > 0 else "λ=0") == label]
                if vals:
                    x = g + (k - (len(labels) - 1) / 2) * width
                    ax.scatter([x] * len(vals), vals, s=14, color=f"C{k}", label=label if g == 0 else None)
        ax.set_xticks(range(len(generators)), generators, rotation=20)
        ax.set_title(title)
        if key == "audit_auc":
            ax.axhline(0.6, color="gray", lw=0.8, ls="--")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_traces(path: Path, rows: list[dict]) -> None:
    """Per traced run (λ > 0): the batch's standardised mean gap, log variance ratio and the adversary's loss
    over the training steps (smoothed over 10 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traced = [r for r in rows if r.get("trace")]
    generators = list(dict.fromkeys(r["generator"] for r in traced))
    fig, axes = plt.subplots(len(generators), 3, figsize=(15, 3.6 * len(generators)), squeeze=False)
    for g, generator in enumerate(generators):
        for k, r in enumerate(x for x in traced if x["generator"] == generator):
            label = f"{r['method']} λ={r['lambda']:g}" if r["lambda"] > 0 else "λ=0"
            for ax, key in zip(axes[g], ("gap", "log_var_ratio", "adv_loss")):
                steps = [t["step"] for t in r["trace"] if t[key] is not None]
                values = np.asarray([t[key] for t in r["trace"] if t[key] is not None], dtype=float)
                smooth = np.convolve(values, np.ones(10) / 10, mode="valid") if len(values) >= 10 else values
                ax.plot(steps[len(steps) - len(smooth):], smooth, lw=1, color=f"C{k}", label=label)
                ax.set_title(f"{generator}: {key}")
        axes[g][0].axhline(0, color="gray", lw=0.6)
        axes[g][1].axhline(0, color="gray", lw=0.6)
        axes[g][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from bench_data import cpu_model  # bench/ is the script's folder, on sys.path

    from guard import synthetic

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="rm", choices=("rm", "pref"))
    parser.add_argument("--generators", type=parse_list, default=list(synthetic.GENERATORS))
    parser.add_argument("--methods", type=parse_list, default=["default"])
    parser.add_argument("--lambdas", type=lambda t: parse_list(t, float), default=None,
                        help="default: 0 and the recipe's default λ")
    parser.add_argument("--seeds", type=lambda t: parse_list(t, int), default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-pairs", type=int, default=None, help="default 4000 (pku19: 8000)")
    parser.add_argument("--eval-pairs", type=int, default=None, help="default 2000 (pku19: 6000)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a config field for every run (after the method's)")
    parser.add_argument("--work", default="/tmp/fair-runs", help="data and runs (outside the repo)")
    parser.add_argument("--fresh", action="store_true", help="rerun runs whose results are already in --work")
    parser.add_argument("--trace", action="store_true", help="rerun and record every step's batch statistics "
                        "(two-category generators); --out then also writes <out>-trace.png")
    parser.add_argument("--out", help="write the tables here (.md), the rows beside it (.json) and a plot (.png)")
    parser.add_argument("--machine", default=f"{socket.gethostname()} ({cpu_model()}, {os.cpu_count()} cores)")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                        help="compare two sweeps' results (written by --out) and run nothing; exit 1 if they disagree")
    args = parser.parse_args(argv)
    if args.compare:
        first, second = (json.loads(Path(p).read_text(encoding="utf-8")) for p in args.compare)
        agree, report = compare(first, second)
        report = (f"# Fairness sweeps compared, {date.today().isoformat()}\n\na = `{args.compare[0]}`, "
                  f"b = `{args.compare[1]}`\n\n{report}")
        print(report, end="")
        if args.out:
            Path(args.out).with_suffix(".md").write_text(report, encoding="utf-8")
        return 0 if agree else 1
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    if args.lambdas is None:
        from guard.train import rm

        args.lambdas = [0.0, *rm.RMConfig().lambda_adv]
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(" | ".join(HEADER))
    rows = sweep(args)
    worst = worst_cases(rows)
    for w in worst:
        print(f"worst {w['generator']} {w['method']} λ={w['lambda']:g}: MI ratio {w['worst_mi_ratio']:.3f}, "
              f"audit AUC {w['worst_audit_auc']:.3f}, accuracy drop {w['worst_accuracy_drop']:+.3f} "
              f"({'pass' if w['pass'] else 'FAIL'})")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(markdown(rows, worst, args, time.perf_counter() - started), encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps({"rows": rows, "worst": worst}, indent=1) + "\n",
                                            encoding="utf-8")
        plot(out.with_suffix(".png"), rows)
        if args.trace:
            plot_traces(out.with_name(out.stem + "-trace.png"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
