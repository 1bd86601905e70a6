"""What a newcomer runs: the README's usage block executes as written, and the default job
(`python -m guard.train`) trains a plain and a fair reward model and audits both side by side."""

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


def test_default_job_shows_the_fair_model_beside_the_baseline():
    result = subprocess.run(
        [sys.executable, "-m", "guard.train"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "not built yet" in out  # it says it is a stand-in

    def row(name):
        return [float(x) for x in re.search(rf"^{name}\s+(\S+)\s+(\S+)$", out, flags=re.M).groups()]

    (base_acc, fair_acc), (base_mi, fair_mi) = row("accuracy"), row("binned MI")
    base_ks, fair_ks = row("KS")
    assert base_acc > 0.8 and abs(fair_acc - base_acc) <= 0.03, out
    assert base_ks > 0.1 and fair_ks < base_ks, out  # the plain BT model's rewards differ by category
    assert fair_mi < base_mi / 2, out


def test_default_job_help():
    result = subprocess.run([sys.executable, "-m", "guard.train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--pairs" in result.stdout
