"""report.md of a run that scores held-out pairs (reward model, preference policy): the GUARD audit table,
reward histograms by category and chosen vs rejected, training curves and the data accounting.

    write_reward_report(run_dir, "Reward model, λ = 0.2", intro, data, summary, SUMMARY_ROWS, chosen, rejected,
                        eval_names, ("bt_loss", "accuracy"))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from guard.jsonfiles import read_jsonl
from guard.train.inputs import TrainEval


def write_reward_report(run_dir: Path, title: str, intro: str, data: TrainEval, summary: dict,
                        summary_rows: Sequence[tuple[str, str]], chosen: np.ndarray, rejected: np.ndarray,
                        eval_names: list[str], curve_keys: Sequence[str], what: str = "rewards") -> None:
    """report.md with the held-out audit of (chosen, rejected) rewards, histograms by category and chosen vs
    rejected, training curves of `curve_keys` from metrics.jsonl, and the data accounting."""
    from guard import plots
    from guard.report import Report

    names = np.asarray(eval_names)
    by_category = {c: np.concatenate([chosen[names == c], rejected[names == c]]) for c in dict.fromkeys(eval_names)}
    plots.reward_histograms(run_dir / "rewards_by_category.png", by_category, f"held-out {what} by category ({title})",
                            pooled_pairs=True)
    plots.chosen_rejected_histogram(run_dir / "chosen_vs_rejected.png", chosen, rejected,
                                    f"held-out {what}, chosen vs rejected ({title})")
    history = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    steps = [m["step"] for m in history]
    plots.curves(run_dir / "training_curves.png", {key: (steps, [m[key] for m in history])
                                                   for key in curve_keys if history},
                 "training (per logged step)", "value")

    report = Report(title)
    report.text(intro)
    report.heading("Held-out audit", 2)
    report.table([{"metric": label, "value": summary.get(key)} for label, key in summary_rows])
    report.table([{"category": c, **v} for c, v in summary.get("categories", {}).items()])
    report.image("rewards_by_category.png", f"{what} by category")
    report.image("chosen_vs_rejected.png", f"chosen vs rejected {what}")
    report.heading("Training", 2)
    report.image("training_curves.png", "training curves")
    data_section(report, data.train.rows_read, data.set_aside, data.set_aside_rows,
                 [f"Training pairs: {len(data.train)}; held-out pairs: {len(data.eval)}.",
                  f"Pairs kept with a sequence cut at its end to --max-length: {data.truncated}."])
    report.write(run_dir / "report.md")


def data_section(report, rows_read: int, set_aside: dict[str, int], set_aside_rows: dict[str, list[str]],
                 notes: Sequence[str] = ()) -> None:
    """The report's "Data" section: rows read, `notes`, and every reason rows were set aside with the first rows
    of each named as the input names them ("line 8"), or that nothing was."""
    report.heading("Data", 2)
    report.text(" ".join([f"Rows read: {rows_read}.", *notes]))
    if not set_aside:
        report.text("Nothing was set aside.")
        return
    report.text("Rows or pairs set aside, by stage and reason:")
    report.table([{"reason": k, "count": n, "first rows": ", ".join(set_aside_rows.get(k, [])) or "-"}
                  for k, n in set_aside.items()])
