"""`python -m guard.train`: guard's training entry point.

    python -m guard.train                 # the default job: a plain and a fair reward model on the bundled sample
    python -m guard.train rm --help       # reward models with GUARD's fairness term (guard/train/rm.py)
    python -m guard.train pref --help     # DPO, IPO, APO-zero/down, KTO-pair, SPO rounds on a policy (guard/train/pref.py)
    python -m guard.train ppo --help      # PPO with a value head, adaptive KL and RND curiosity (guard/train/ppo.py)

The default job trains the tiny Llama preset as a reward model on `guard/assets/sample_pairs.jsonl` (pairs
from two categories, where one category's responses carry phrases the preference likes, so a plain
Bradley–Terry model learns a category-dependent reward shift), twice: λ = 0 (plain BT) and λ = 0.2 (guard's
default fairness penalty, guard/fairness.py), then prints pair accuracy, KS, Wasserstein-1, binned MI and audit
AUC of the held-out rewards side by side, with the paths to the reports. It writes to ./runs/guard-default.
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import replace

from guard.train import options

DEFAULT_OUTPUT_DIR = "runs/guard-default"


def default_job_config(output_dir: str = DEFAULT_OUTPUT_DIR) -> options.RMConfig:
    """The default job's settings: the bundled sample, the tiny preset on one CPU thread (fastest for a model
    this small, and the same numbers on every machine), λ = 0 and 0.2 on one seed."""
    from guard import assets

    return replace(
        options.RMConfig(),
        data=str(assets.SAMPLE_PAIRS),
        model="tiny",
        tokenizer=str(assets.TOKENIZER),
        max_length=64,
        epochs=3,
        batch_size=32,
        lr=2e-3,
        warmup_ratio=0.05,
        max_grad_norm=0.0,
        lambda_adv=[0.0, 0.2],
        log_every=10,
        save_every=0,
        threads=1,
        output_dir=output_dir,
        overwrite=True,
    )


def default_job() -> int:
    from guard.train import rm

    print("guard: no recipe given, running the default job (python -m guard.train --help for the recipes)")
    started = time.perf_counter()
    cfg = default_job_config()
    print(options.describe_settings(cfg))
    summaries = rm.run(cfg, labels=["baseline (λ=0)", f"fair (λ={cfg.lambda_adv[1]:g})"])
    base, fair = summaries
    print(f"({time.perf_counter() - started:.0f}s) binned MI {base['binned_mi']:.3f} -> {fair['binned_mi']:.3f}, "
          f"pair accuracy {base['accuracy']:.3f} -> {fair['accuracy']:.3f}")
    return 0


def run_recipe(name: str, argv: list[str] | None) -> int:
    """Parse and check the recipe's options first (no torch yet, so --help and a bad value answer at once),
    then import the recipe and run it."""
    cfg = options.parse_recipe(name, argv)
    importlib.import_module(f"guard.train.{name}").run(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return options.run_cli(lambda _: default_job())
    if argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nrecipes: " + ", ".join(options.RECIPES))
        return 0
    if argv[0] not in options.RECIPES:
        print(f"error: unknown recipe {argv[0]!r}; expected one of {', '.join(options.RECIPES)} (or no argument "
              "for the default job)", file=sys.stderr)
        return 2
    name = argv[0]
    return options.run_cli(lambda rest: run_recipe(name, rest), argv[1:])


if __name__ == "__main__":
    sys.exit(main())
