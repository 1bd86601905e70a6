"""`python -m guard.eval`: audit reward models and policies the way GUARD does.

    python -m guard.eval rewards --rewards runs/rm/rewards.jsonl --output-dir OUT     # KS, W1, MI, audit, plots
    python -m guard.eval rewards --reward-model runs/rm/model --data pairs.jsonl --baseline OTHER --output-dir OUT
    python -m guard.eval parity --policy P --baseline-policy B --scorer RM --prompts prompts.jsonl --output-dir OUT
    python -m guard.eval diversity --policy P --baseline-policy B --prompts prompts.jsonl --output-dir OUT
    python -m guard.eval bias --reward-model RM --baseline OTHER_RM --benchmark crows_pairs --data FILE --output-dir OUT
    python -m guard.eval SUBCOMMAND --help                                            # every option

Every subcommand writes OUT/results.json, OUT/report.md with its plots and OUT/config.yaml, and prints a
compact table. The statistics are guard.metrics and guard.audit; the subcommands are rewards.py, parity.py,
diversity.py and bias.py in this folder.
"""

from __future__ import annotations

import importlib
import sys

from guard.train.options import run_cli

SUBCOMMANDS = ("rewards", "parity", "diversity", "bias")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nsubcommands: " + ", ".join(SUBCOMMANDS))
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        print(f"error: unknown subcommand {argv[0]!r}; expected one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"guard.eval.{argv[0]}")
    return run_cli(module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
