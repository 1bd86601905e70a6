"""What a newcomer runs: the README's usage block executes as written, and the default job
(`python -m guard.train`) trains a reward model that ranks pairs and shows the category shift."""

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


def test_default_job_learns_rewards_and_reports_the_shift():
    result = subprocess.run(
        [sys.executable, "-m", "guard.train", "--pairs", "1500", "--steps", "150"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "not built yet" in out  # it says it is a stand-in
    accuracy = float(re.search(r"held-out pair accuracy ([\d.]+)", out).group(1))
    ks = float(re.search(r"KS ([\d.]+)", out).group(1))
    auc = float(re.search(r"audit AUC ([\d.]+)", out).group(1))
    assert accuracy > 0.8, out
    assert ks > 0.1 and auc > 0.55, out  # the plain BT model's rewards differ by category


def test_default_job_help():
    result = subprocess.run([sys.executable, "-m", "guard.train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--pairs" in result.stdout
