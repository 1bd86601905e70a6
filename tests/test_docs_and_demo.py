"""What a newcomer runs: the README's usage block executes as written, and the default job
(`python -m guard.train`) trains a plain and a fair tiny-Llama reward model on the bundled sample and audits
both side by side; `python -m guard.eval rewards` on the two rewards.jsonl files prints the numbers the trainer
printed."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_usage_block_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no python usage block"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["keep"].tolist() == [0, 1]
    assert namespace["moments"].shape == (4, 2, 4) and namespace["counts"].tolist() == [3, 4, 1, 0]
    assert 0.0 <= namespace["p_value"] <= 1.0 and set(namespace["audit"]) == {"auc_mean", "auc_std", "ba_mean", "ba_std"}
    assert namespace["out"].moments.shape == (2, 2, 4) and namespace["hidden"].grad is not None
    assert namespace["logp"].shape == namespace["entropy"].shape == (24,)
    # The data layer's example prints what its comments say.
    shown = re.search(r"print\(tok\.decode_batch\(pairs\.chosen\)\)  # (\[.*?\])", readme).group(1)
    assert namespace["tok"].decode_batch(namespace["pairs"].chosen) == ast.literal_eval(shown)
    shown = re.search(r"print\(\{k: round\(v, 4\) for k, v in efficiency\.items\(\)\}\)  # (\{.*?\})", readme).group(1)
    assert {k: round(v, 4) for k, v in namespace["efficiency"].items()} == ast.literal_eval(shown)



def test_default_job_fair_model_halves_the_mutual_information(tmp_path):
    """The embedded default job, as a user runs it from a fresh install (it pins its own thread count): the fair
    model's binned MI is below half the baseline's, its audit AUC at most 0.55 and its pair accuracy within 3
    points; the numbers are in the reports."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-m", "guard.train"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "runs" / "guard-default"
    base = json.loads((out / "lambda-0" / "summary.json").read_text())
    fair = json.loads((out / "lambda-0.2" / "summary.json").read_text())
    assert base["binned_mi"] > 0.1, base
    assert fair["binned_mi"] < 0.5 * base["binned_mi"], (base, fair)
    assert abs(fair["accuracy"] - base["accuracy"]) <= 0.03, (base, fair)
    assert base["audit_auc"] > 0.8 and fair["audit_auc"] <= 0.55, (base, fair)
    assert "threads=1" in result.stdout  # the job's own setting, whatever the machine's cores
    for label in ("pair accuracy", "KS", "Wasserstein-1", "binned MI", "audit AUC"):
        assert label in result.stdout, result.stdout
    assert f"{fair['binned_mi']:.4g}" in (out / "report.md").read_text()
    assert "runs/guard-default/report.md" in result.stdout and (out / "lambda-0.2" / "rewards_by_category.png").is_file()

    # The evaluation command on the run's rewards files reproduces the trainer's table, number for number.
    audit = subprocess.run([sys.executable, "-m", "guard.eval", "rewards", "--rewards", "runs/guard-default/lambda-0.2/"
                            "rewards.jsonl", "--baseline", "runs/guard-default/lambda-0/rewards.jsonl", "--output-dir",
                            "audit", "--permutations", "100"], cwd=tmp_path, capture_output=True, text=True, env=env,
                           timeout=600)
    assert audit.returncode == 0, audit.stderr[-3000:]
    trained, evaluated = table_rows(result.stdout), table_rows(audit.stdout)
    labels = ("pair accuracy", "BT loss", "KS", "KS p-value", "Wasserstein-1", "binned MI (nats)", "audit AUC")
    for label in labels:
        base, fair = trained[label]
        assert evaluated[label][:2] == [fair, base], (label, trained[label], evaluated[label])


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The cells of each row of a printed guard table, by its label (the first cell: words separated by single
    spaces, then two or more spaces)."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^(\S+(?: \S+)*)\s{2,}(.*)$", line)
        if match:
            rows[match.group(1)] = match.group(2).split()
    return rows


def test_default_job_help():
    result = subprocess.run([sys.executable, "-m", "guard.train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "default job" in result.stdout and "rm" in result.stdout
