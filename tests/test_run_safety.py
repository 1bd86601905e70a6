"""Nothing lost, nothing silent: --overwrite deletes only what guard wrote, one run at a time per output directory
(a lock), a non-finite loss stops the run with an error naming the step and never reaches metrics.jsonl, --resume
refuses a changed configuration, and the safe defaults (weights_only, safe_load, no remote code) stay."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from guard import jsonfiles, models
from guard.config import ConfigError
from guard.eval.common import EvalOptions
from guard.train import loop, options, rundir
from guard.train.__main__ import main as train_main

from recipe_runs import kill_after_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--tokenizer", str(models.TINY_TOKENIZER), "--max-length", "32", "--batch-size", "8",
        "--lambda-adv", "0", "--log-every", "1", "--lr", "1e-3"]


@pytest.fixture
def pairs(tmp_path) -> Path:
    rows = [{"prompt": f"Question {k}?", "chosen": f"Yes, {k} is fine.", "rejected": f"No idea about {k}."}
            for k in range(40)]
    return jsonfiles.write_jsonl(tmp_path / "pairs.jsonl", rows)


def rm(pairs: Path, out: Path, *extra: str) -> int:
    return train_main(["rm", "--data", str(pairs), "--output-dir", str(out), "--max-steps", "2", "--save-every", "1",
                       *TINY, *extra])


# ----------------------------------------------------------------------------------------------------
# --overwrite


def test_overwrite_deletes_only_what_guard_wrote(tmp_path, pairs):
    project = tmp_path / "proj"
    (project / "notes").mkdir(parents=True)
    (project / "notes" / "todo.txt").write_text("keep me")
    data = project / "data.jsonl"
    data.write_bytes(pairs.read_bytes())
    (project / "plot.png").write_bytes(b"the user's own picture")  # a name guard could write: it was here first
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("not guard's")
    (project / "shared").symlink_to(elsewhere, target_is_directory=True)

    assert rm(data, project) == 0
    assert (project / "summary.json").is_file() and (project / "checkpoints").is_dir()
    (project / "model").rename(project / "model-real")
    (project / "model").symlink_to(project / "model-real", target_is_directory=True)  # guard's name, a link

    assert rm(data, project) == 2  # a run is there: refused without --overwrite or --resume
    assert rm(data, project, "--overwrite") == 0
    assert data.read_bytes() == pairs.read_bytes() and (project / "notes" / "todo.txt").read_text() == "keep me"
    assert (project / "plot.png").read_bytes() == b"the user's own picture"
    assert (elsewhere / "precious.txt").read_text() == "not guard's" and (project / "shared").is_symlink()
    assert (project / "model-real").is_dir()  # only the link named model was removed, not what it pointed to
    assert (project / "model").is_dir() and not (project / "model").is_symlink()  # the new run's model
    assert [r["step"] for r in jsonfiles.read_jsonl(project / "metrics.jsonl")] == [1, 2]


# ----------------------------------------------------------------------------------------------------
# One run per directory


def test_a_second_run_on_a_locked_directory_stops_with_one_error_line(tmp_path, pairs, capsys):
    out = tmp_path / "run"
    with rundir.RunLock(out):
        assert rm(pairs, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(rf"error: another guard run \(pid {os.getpid()}\) is using --output-dir {out}",
                                      err[0]), err
    assert not (out / "metrics.jsonl").exists() and not (out / "config.yaml").exists()
    assert rm(pairs, out) == 0  # released: the next run goes ahead


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from guard.train.rundir import RunLock
        lock = RunLock({str(out)!r}).__enter__()  # held until the process dies
        print("locked", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            with rundir.RunLock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    with rundir.RunLock(out):  # the kernel dropped the dead process's lock
        pass


def test_two_processes_racing_for_one_directory_one_wins(tmp_path, pairs):
    """Two real runs started together on one --output-dir: exactly one trains, the other exits 2 at once."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "guard.train", "rm", "--data", str(pairs), "--output-dir", str(out),
            "--max-steps", "3", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.communicate(timeout=300)[1], p.returncode)[::-1] for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another guard run" in loser and "Traceback" not in loser
    assert [r["step"] for r in jsonfiles.read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]  # one run's, not two


# ----------------------------------------------------------------------------------------------------
# Non-finite losses


def test_the_watch_names_the_first_bad_step_without_reading_every_step():
    watch = loop.FiniteWatch(torch.device("cpu"))
    for step, value in enumerate([0.5, 0.4, float("nan"), float("inf"), 0.3], 1):
        watch.watch(step, torch.tensor(value))
    with pytest.raises(rundir.NonFiniteLoss, match=r"^step 3: the loss is not finite"):
        watch.check(lr=1e-3)
    fine = loop.FiniteWatch(torch.device("cpu"))
    fine.watch(1, torch.tensor(0.7))
    fine.check()


def test_metrics_log_never_writes_nan(tmp_path):
    log = rundir.MetricsLog(tmp_path / "metrics.jsonl")
    log.log({"step": 1, "loss": 0.5})
    with pytest.raises(rundir.NonFiniteLoss, match=r"step 2: loss = nan is not finite"):
        log.log({"step": 2, "loss": float("nan"), "lr": 1e-3})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": 0.5}


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, pairs, capsys):
    out = tmp_path / "run"
    code = train_main(["rm", "--data", str(pairs), "--output-dir", str(out), "--max-steps", "30", "--save-every", "0",
                       *TINY, "--lr", "1e30", "--warmup-ratio", "0", "--lr-schedule", "constant"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"error: step \d+: the loss is not finite", err), err
    step = int(re.search(r"step (\d+)", err).group(1))
    text = (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert [r["step"] for r in jsonfiles.read_jsonl(out / "metrics.jsonl")] == list(range(1, step))
    assert not (out / "summary.json").exists() and not (out / "model").exists()


# ----------------------------------------------------------------------------------------------------
# --resume


def test_resume_refuses_a_changed_configuration_and_allows_named_changes(tmp_path, pairs, capsys):
    """A run SIGKILLed after its step-2 checkpoint, resumed with changed options (a finished run is checked too)."""
    out = tmp_path / "run"
    kill_after_checkpoint("rm", ["--data", str(pairs), "--output-dir", str(out), "--max-steps", "40",
                                 "--save-every", "2", *TINY], out, 2)
    saved = (out / "config.yaml").read_text()
    for flags, message in [(["--batch-size", "4"], "--batch-size (8 -> 4)"), (["--seed", "1"], "--seed (0 -> 1)"),
                           (["--eval-fraction", "0.2"], "--eval-fraction (0.1 -> 0.2)")]:
        assert rm(pairs, out, "--resume", "--max-steps", "40", *flags) == 2
        err = capsys.readouterr().err
        assert message in err and "start a new run" in err, err
    assert rm(pairs, out, "--resume", "--max-steps", "40", "--lr", "5e-4") == 2
    assert "pass --resume-changes lr" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == saved  # nothing rewritten by a refused resume
    assert rm(pairs, out, "--resume", "--lr", "5e-4", "--max-steps", "8", "--resume-changes", "lr,max_steps") == 0
    assert [r["step"] for r in jsonfiles.read_jsonl(out / "metrics.jsonl")] == list(range(1, 9))
    assert "lr: 0.0005" in (out / "config.yaml").read_text()
    # finished now: a resume with a changed seed is still refused; options that change nothing computed are free
    assert rm(pairs, out, "--resume", "--lr", "5e-4", "--max-steps", "8", "--seed", "3") == 2
    assert "--seed (0 -> 3)" in capsys.readouterr().err
    assert rm(pairs, out, "--resume", "--lr", "5e-4", "--max-steps", "8", "--log-every", "2", "--threads", "2") == 0


def test_resume_keys_are_sorted_into_fixed_and_free_and_name_real_options():
    fields = set()
    for cls, _, _ in options.RECIPES.values():
        fields |= set(cls.__dataclass_fields__)
    assert set(rundir.RESUME_FIXED) <= fields and set(rundir.RESUME_FREE) <= fields
    assert not set(rundir.RESUME_FIXED) & set(rundir.RESUME_FREE)


# ----------------------------------------------------------------------------------------------------
# Safe defaults


def test_safe_defaults_stay():
    for cls in (options.RMConfig, options.PrefConfig, options.PPOConfig, EvalOptions):
        assert cls().trust_remote_code is False, cls
    sources = {p: p.read_text() for p in (ROOT / "python" / "guard").rglob("*.py")}
    for path, text in sources.items():
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path
        assert "allow_pickle=True" not in text and "pickle.load" not in text, path
        assert "trust_remote_code=True" not in text, path
    assert "trust_remote_code=False" in sources[ROOT / "python" / "guard" / "models.py"]  # the tokenizer's load
