"""Running guard's training recipes as subprocesses in tests: one process, torchrun with two gloo processes, and
a run SIGKILLed as soon as a given checkpoint exists (for resume tests). Every process runs with
OMP_NUM_THREADS=1 (the CI machine has two cores)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from guard import distributed, jsonfiles


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_ok(command: list[str]) -> None:
    """Run `command`; on failure, show the lines naming an error first (torchrun buries them), then the tail."""
    result = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=600, check=False)
    errors = [line for line in result.stderr.splitlines() if "Error" in line or line.startswith("error:")]
    assert result.returncode == 0, "\n".join(errors[-10:]) + "\n---\n" + result.stderr[-3000:]


def run_recipe(recipe: str, args: list[str]) -> None:
    run_ok([sys.executable, "-m", "guard.train", recipe, *args])


def run_torchrun(recipe: str, args: list[str], module: str = "guard.train") -> None:
    """`recipe` (a subcommand of `module`: guard.train or guard.eval) in two gloo processes on the CPU."""
    run_ok([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            "-m", module, recipe, *args, "--device", "cpu"])


def kill_after_checkpoint(recipe: str, args: list[str], run_dir: Path, step: int) -> list[dict]:
    """Start the recipe on `args`, SIGKILL it as soon as run_dir's checkpoint of `step` exists (a complete one: it
    is renamed into place), check that it did stop before its end, and return the metrics lines (timings
    included) up to the step of run_dir's newest checkpoint: a resume must keep them as they are, where a run
    restarted from step 0 would write new timings."""
    checkpoint = run_dir / "checkpoints" / f"step-{step:08d}"
    proc = subprocess.Popen([sys.executable, "-m", "guard.train", recipe, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env())
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not checkpoint.is_dir() and proc.poll() is None:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert checkpoint.is_dir(), f"{checkpoint} never appeared"
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    last = int(distributed.latest_checkpoint(run_dir).name.split("-")[1])
    kept = [row for row in jsonfiles.read_jsonl(run_dir / "metrics.jsonl") if row["step"] <= last]
    assert [row["step"] for row in kept] == list(range(1, last + 1))
    return kept
