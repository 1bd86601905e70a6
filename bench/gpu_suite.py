"""The GPU suite: one call on a lent GPU machine measures guard there, step by step, and brings the numbers back.

    bash bench/carry_wheels.sh                      # here, first: .whl/ = guard's wheel, the peers, datasets & co.
    bash bench/gpu_suite.sh                         # on the GPU machine (the device call below)
    python bench/gpu_suite.py --dry-run --out DIR   # the same steps on the CPU at tiny shapes (tests/test_gpu_suite.py)
    python bench/gpu_suite.py --list                # the steps and their command lines
    bash bench/gpu_suite.sh --only ops-16384x4096x128256,train-rm   # a rerun of some steps (names from --list)

The device call (the `run` tool), prepared: command `bash bench/gpu_suite.sh`, carry [".whl"], timeout_s 540.

What it does, in order, within one time budget (--budget, default BUDGET_S: 8 minutes of wall time in all):
  1. installs the carried wheels: `pip install --no-index --no-deps --no-compile --target WORK/site .whl/*.whl`
     (a wheel of a package the machine already has, such as torch, triton or transformers, is refused, never
     installed), and puts WORK/site first on PYTHONPATH for every step; guard comes from its wheel, unless the
     wheel's Python files differ from this tree's (python/guard edited since carry_wheels.sh ran, e.g. a tile
     size in kernels/tuning.py between two runs): then the tree's python/ goes first, with the wheel's compiled
     extension, and the report says so;
  2. records the environment: device, driver, torch / triton / transformers / peer versions, where guard was
     imported from, and any carried package whose requirements the machine's versions miss;
  3. runs each step of STEPS (below), most valuable first, in its own subprocess (its own process group, killed
     whole at its timeout), with its own timeout, never longer than what is left of the budget, going on after a
     failure. A step whose modules are missing (`needs`) is recorded as skipped, with the names.
  4. prints a summary table last and writes, to --out (default: $OUT, the folder the device tool brings back):
        gpu-suite.md               the summary, the environment, each step's result tables and output tail
        gpu-suite.json             the same as data: every step's command, status, seconds, output tail, files
        gpu-suite.log              every step's full output
        gpu-suite-results.tar.gz   results/<step>/<file> (ops-*.md/json, train-rm-*.md, ...), logs/, the json
Exit status 1 when a step failed or timed out (skipped steps are not failures).

--dry-run: the same steps with their CPU smoke command lines (tiny shapes, one thread), no wheels unless --wheels
names a folder, and `pytest -m gpu` still run (it records "skipped: no CUDA"); it proves on a CPU machine that
every step starts, writes its files and is reported, so the suite cannot rot between device sessions.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import check_wheels  # noqa: E402  (what the machine has: never install over it)


@dataclasses.dataclass(frozen=True)
class Step:
    name: str  # also the folder its result files go to
    what: str  # one line for the report
    gpu: str  # its command line on the GPU machine, after the Python interpreter, in shell syntax
    dry: str  # its command line in the CPU dry run
    timeout_s: int  # on the GPU machine; the dry run gives each DRY_TIMEOUT_S
    needs: tuple[str, ...] = ()  # modules it cannot run without: missing ones make it a recorded skip


# ---------------------------------------------------------------------------------------------------------
# The steps: edit here. Placeholders: {results} = this step's result folder, {tag} = "<device>-<date>" for file
# names ("NVIDIA-H200-2026-12-04"). The timeouts add up to more than the budget on purpose: a step that ends
# early leaves its time to the next, and the budget cuts the last ones when everything runs long.

BUDGET_S = 465  # the whole suite, install included: under 8 minutes, inside a device call of timeout_s 540
DRY_BUDGET_S = 900
DRY_TIMEOUT_S = 300
MIN_STEP_S = 20  # a step with less time than this left is not started
PROBE_TIMEOUT_S = 90  # the environment probe (imports torch and guard, asks nvidia-smi)

# Both guard designs (with and without the head's gradient) first, then the peers, eager and torch.compile last
# (the slowest to warm up): bench_ops starts no new row once --budget-s is spent, so a long compile cannot cost
# the guard rows.
OPS_IMPLS = ("guard-chunked,guard-tiled,guard-chunked-frozen,guard-tiled-frozen,liger,liger-ce,trl,cce,torch,"
             "torch-frozen,compile")
OPS = "bench/bench_ops.py --shapes {shape} --impls " + OPS_IMPLS + " --budget-s {budget} --out {{results}}"
OPS_DRY = "bench/bench_ops.py --smoke --impls guard,guard-chunked,guard-tiled,torch,liger --out {results}"
TRAIN_DRY = "--config tiny --device cpu --steps 1 --warmup 1 --threads 1"
# The same on the CPU, where conftest skips every gpu test: the dry run records "skipped: no CUDA".
PYTEST_GPU = ("-m pytest -m gpu -q -rfEs -p no:cacheprovider --continue-on-collection-errors "
              "--junitxml={results}/pytest-gpu.xml")

STEPS = [
    Step("pytest-gpu", "pytest -m gpu: compiled kernels on CUDA vs float64 references, bf16, V*H > 2^31, peak memory",
         gpu=PYTEST_GPU, dry=PYTEST_GPU, timeout_s=150, needs=("guard", "pytest")),
    Step("ops-16384x4096x128256", "bench_ops: DPO loss step from hidden states, Llama-3-8B head, bf16, vs peers",
         gpu=OPS.format(shape="16384x4096x128256", budget=75), dry=OPS_DRY,
         timeout_s=100, needs=("guard",)),
    Step("ops-4096x2048x32000", "bench_ops: the same at a small head",
         gpu=OPS.format(shape="4096x2048x32000", budget=20), dry=OPS_DRY,
         timeout_s=45, needs=("guard",)),
    Step("ops-8192x4096x152064", "bench_ops: the same at a Qwen-sized vocabulary",
         gpu=OPS.format(shape="8192x4096x152064", budget=45), dry=OPS_DRY,
         timeout_s=70, needs=("guard",)),
    Step("train-rm", "bench_train rm: one reward-model step, guard vs TRL RewardTrainer, 1B Llama, bf16",
         gpu="bench/bench_train.py rm --steps 5 --warmup 2 --out {results}/train-rm-{tag}.md "
             "--json {results}/train-rm-{tag}.json",
         dry=f"bench/bench_train.py rm {TRAIN_DRY} --out {{results}}/train-rm-{{tag}}.md "
             "--json {results}/train-rm-{tag}.json",
         timeout_s=80, needs=("guard", "trl", "datasets")),
    Step("train-dpo", "bench_train dpo: one DPO step with LoRA, guard vs TRL DPOTrainer, 1B Llama, bf16",
         gpu="bench/bench_train.py dpo --steps 5 --warmup 2 --out {results}/train-dpo-{tag}.md "
             "--json {results}/train-dpo-{tag}.json",
         dry=f"bench/bench_train.py dpo {TRAIN_DRY} --out {{results}}/train-dpo-{{tag}}.md "
             "--json {results}/train-dpo-{tag}.json",
         timeout_s=90, needs=("guard", "trl", "datasets", "peft")),
    Step("train-packing", "bench_train packing: rm and DPO steps on padded vs packed HH-RLHF-like batches, 1B Llama, "
         "bf16, and tokens of compute per real token",
         gpu="bench/bench_train.py packing --steps 5 --warmup 2 --out {results}/train-packing-{tag}.md "
             "--json {results}/train-packing-{tag}.json",
         dry=f"bench/bench_train.py packing {TRAIN_DRY} --pairs 2 --max-length 64 --dataset-pairs 200 "
             "--tokens-per-step 512 --out {results}/train-packing-{tag}.md --json {results}/train-packing-{tag}.json",
         timeout_s=80, needs=("guard", "peft")),
    # bench_ppo's table header names the trl version (bench_train.versions), so it needs trl too.
    Step("ppo", "bench_ppo: one PPO update of the recipe by phase (generation, experience, training), 1B Llama",
         gpu="bench/bench_ppo.py --steps 1 --warmup 1 --out {results}/ppo-{tag}.md",
         dry="bench/bench_ppo.py --config tiny --device cpu --prompts 4 --prompt-len 8 --new-tokens 4 --minibatch 2 "
             "--micro 2 --steps 1 --warmup 0 --threads 1 --out {results}/ppo-{tag}.md",
         timeout_s=90, needs=("guard", "peft", "trl")),
]

# ---------------------------------------------------------------------------------------------------------

OUT_FILES = ("gpu-suite.md", "gpu-suite.json", "gpu-suite.log", "gpu-suite-results.tar.gz")
TAIL_CHARS = 3000  # of each step's output, in the report
EMBED_BYTES = 256 * 1024  # result files up to this size are copied into gpu-suite.json as text
LOG_CAP_BYTES = 2 * 2**20  # of each step's output in gpu-suite.log (its head and tail beyond that)
QUIET_ENV = {  # no network there: never wait on a hub; no telemetry; no tokenizer thread pools fighting the steps
    "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg",
}


# ---------------------------------------------------------------------------------------------------------
# Installing the carried wheels


def install_wheels(wheel_dir: Path, target: Path, python: str = sys.executable) -> dict:
    """pip install every wheel in wheel_dir into target with no index and no dependencies, refusing any wheel of
    a package the machine has (check_wheels.MACHINE_PACKAGES): a --target copy of torch would shadow the machine's
    through PYTHONPATH. Returns the record for the report (status, wheels, refused, seconds, output tail)."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    refused = [w.name for w in wheels if check_wheels.wheel_name(w) in check_wheels.MACHINE_PACKAGES]
    chosen = [w for w in wheels if w.name not in refused]
    record = {"wheel_dir": str(wheel_dir), "target": str(target), "wheels": [w.name for w in chosen],
              "refused": refused, "bytes": sum(w.stat().st_size for w in wheels)}
    if not chosen:
        return {**record, "status": f"skipped: no wheels in {wheel_dir}", "seconds": 0.0}
    t0 = time.perf_counter()
    done = check_wheels.install(chosen, target, python)
    record.update(seconds=time.perf_counter() - t0, returncode=done.returncode,
                  tail=(done.stdout + done.stderr)[-TAIL_CHARS:])
    record["status"] = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    return record


def _py_hashes(package_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(package_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(package_dir.rglob("*.py")) if "__pycache__" not in p.parts}


def choose_guard_source(site: Path, tree: Path = ROOT / "python") -> dict:
    """guard from its wheel in `site` when the wheel's Python files are this tree's; otherwise the tree's
    python/ (put before site on PYTHONPATH by the caller) with the wheel's compiled extension copied beside it
    when the tree has none (it is git-ignored, so it does not travel to the device)."""
    wheel_pkg, tree_pkg = site / "guard", tree / "guard"
    if not wheel_pkg.is_dir():
        return {"source": "tree (no guard wheel installed)", "tree_first": True, "differing_files": []}
    ours, theirs = _py_hashes(tree_pkg), _py_hashes(wheel_pkg)
    differing = sorted(f for f in set(ours) | set(theirs) if ours.get(f) != theirs.get(f))
    if not differing:
        return {"source": "wheel", "tree_first": False, "differing_files": []}
    copied = []
    if not list(tree_pkg.glob("_rust*.so")):
        for so in wheel_pkg.glob("_rust*.so"):
            shutil.copy2(so, tree_pkg / so.name)
            copied.append(so.name)
    return {"source": "tree: the wheel's Python files differ from this tree's (rebuild with bench/carry_wheels.sh); "
                      "the tree's python/ runs, with the wheel's extension" + (" copied in" if copied else ""),
            "tree_first": True, "differing_files": differing, "copied": copied}


# ---------------------------------------------------------------------------------------------------------
# The environment (run in a subprocess with the steps' environment: `gpu_suite.py --probe MODULES...`)


def probe(modules: list[str]) -> dict:
    """What the steps will run on: interpreter, versions, device, where guard comes from, which `modules` import."""
    import importlib.metadata
    import importlib.util

    info = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    versions = {}
    for dist in ("torch", "triton", "transformers", "peft", "accelerate", "datasets", "trl", "liger-kernel",
                 "cut-cross-entropy", "guard", "numpy", "pyarrow", "fsspec", "huggingface-hub", "pytest"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    info["versions"] = versions
    info["importable"] = {m: importlib.util.find_spec(m) is not None for m in modules}
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        info["torch_cuda"] = torch.version.cuda
        if info["cuda"]:
            props = torch.cuda.get_device_properties(0)
            info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                        memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count)
        else:
            info["device"] = f"CPU ({platform.processor() or platform.machine()})"
    except Exception as e:  # a broken torch is a finding, not a crash of the suite
        info.update(cuda=False, device="unknown", torch_error=f"{type(e).__name__}: {e}")
    try:
        import guard
        import guard._rust

        info["guard_file"] = guard.__file__
        info["guard_rust"] = guard._rust.__file__
    except Exception as e:
        info["guard_error"] = f"{type(e).__name__}: {e}"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                                   "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"{type(e).__name__}: {e}"
    info["carried_unmet"] = unmet_requirements(os.environ.get("GUARD_SUITE_SITE"))
    return info


def run_probe(env: dict, modules: list[str]) -> dict:
    """probe() in a subprocess with the steps' environment; on failure, a record of it (importable None: unknown)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", *modules]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"probe_error": f"timed out after {PROBE_TIMEOUT_S} s", "importable": None, "cuda": None}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"probe_error": (done.stdout + done.stderr)[-TAIL_CHARS:], "importable": None, "cuda": None}


def unmet_requirements(site: str | None) -> list[str]:
    """Requirements of the packages installed in `site` that this interpreter's packages do not meet (markers
    evaluated here): e.g. datasets' pyarrow floor against the machine's pyarrow. Informative: --no-deps means pip
    never checked them."""
    import importlib.metadata

    if not site or not Path(site).is_dir():
        return []
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ["(packaging is not importable: requirements not checked)"]
    unmet = []
    for dist in importlib.metadata.distributions(path=[site]):
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                unmet.append(f"{dist.metadata['Name']} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{dist.metadata['Name']} needs {req}: have {have}")
    return sorted(set(unmet))


# ---------------------------------------------------------------------------------------------------------
# Running the steps


def step_env(dry_run: bool, pythonpath: list[str], site: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not (k == "TRITON_INTERPRET" and not dry_run)}  # GPU: compiled
    env.update(QUIET_ENV)
    if dry_run:  # the CPU machine has 2 shared cores
        env.update(OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(pythonpath + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if site is not None:
        env["GUARD_SUITE_SITE"] = str(site)
    return env


def command(step: Step, dry_run: bool, results: Path, tag: str) -> list[str]:
    template = step.dry if dry_run else step.gpu
    return [sys.executable] + [arg.format(results=results, tag=tag) for arg in shlex.split(template)]


def run_command(cmd: list[str], env: dict, timeout_s: float, log_path: Path) -> tuple[int | None, float]:
    """Run cmd from the repo root with its output in log_path; at the timeout, end its whole process group
    (pytest, torch.compile and bench subprocesses included). Returns (exit code or None on timeout, seconds).
    A process group, not a new session: when the device tool ends the call it kills what is left of the call's
    session, and a step in a session of its own would run on, holding the GPU, into the next call."""
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=os.setpgrp)  # single-threaded here
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        finally:  # also when the suite itself is stopped (SIGTERM, Ctrl-C) mid-step
            _kill_group(proc.pid, signal.SIGKILL)  # whatever it left behind
            proc.wait()
    return code, time.perf_counter() - t0


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pytest_counts(xml_path: Path) -> dict | None:
    """tests / failures / errors / skipped from a junit xml, or None when pytest wrote none."""
    if not xml_path.is_file():
        return None
    root = ET.parse(xml_path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def judge(step: Step, code: int | None, seconds: float, timeout_s: float, results: Path, cuda: bool) -> tuple[str, str]:
    """(status, detail) of a finished step."""
    detail = ""
    counts = pytest_counts(results / "pytest-gpu.xml") if step.name == "pytest-gpu" else None
    if counts is not None:
        detail = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failures", "errors", "skipped") if counts[k])
    if code is None:
        return f"timed out after {timeout_s:.0f} s", detail
    if counts is not None and code in (0, 5) and not cuda and counts["tests"] == counts["skipped"]:
        return "skipped: no CUDA", detail or "no gpu tests collected"
    if code == 0:
        return "ok", detail
    return f"failed (exit {code})", detail


def run_steps(steps: list[Step], *, dry_run: bool, env: dict, work: Path, tag: str, deadline: float,
              importable: dict[str, bool] | None, cuda: bool, min_step_s: float = MIN_STEP_S, log=print,
              after_each=None) -> list[dict]:
    """Run each step in turn within the deadline (time.monotonic()), going on after failures; a step with less
    than min_step_s left is not started. importable: module -> found (None: unknown, so nothing is skipped for
    it). after_each(records) runs after every step (the caller saves the report so far: a kill of the whole
    call still leaves the finished steps' report behind)."""
    records = []
    for i, step in enumerate(steps, 1):
        results = work / "results" / step.name
        results.mkdir(parents=True, exist_ok=True)
        cmd = command(step, dry_run, results, tag)
        record = {"name": step.name, "what": step.what, "command": shlex.join(cmd[1:]), "seconds": 0.0,
                  "timeout_s": None, "returncode": None, "detail": "", "tail": "", "files": {}}
        missing = [m for m in step.needs if importable is not None and not importable.get(m, False)]
        left = deadline - time.monotonic()
        timeout_s = min(DRY_TIMEOUT_S if dry_run else step.timeout_s, left)
        if missing:
            record["status"] = "skipped: not installed: " + ", ".join(missing)
        elif timeout_s < min_step_s:
            record["status"] = f"not run: {max(left, 0):.0f} s of the budget left"
        else:
            log(f"[{i}/{len(steps)}] {step.name}: {record['command']}  (timeout {timeout_s:.0f} s)")
            log_path = work / "logs" / f"{step.name}.log"
            try:
                code, seconds = run_command(cmd, env, timeout_s, log_path)
                record.update(seconds=round(seconds, 1), timeout_s=round(timeout_s), returncode=code,
                              tail=log_path.read_bytes()[-TAIL_CHARS:].decode("utf-8", "replace"))
                record["status"], record["detail"] = judge(step, code, seconds, timeout_s, results, cuda)
                record["files"] = result_files(results)
            except Exception as e:  # the suite's own trouble with one step must not cost the others
                record["status"] = f"failed (suite error: {type(e).__name__}: {e})"
        log(f"[{i}/{len(steps)}] {step.name}: {record['status']}" + (f" ({record['seconds']:.1f} s)" if record["seconds"] else "")
            + (f" - {record['detail']}" if record["detail"] else ""))
        records.append(record)
        if after_each is not None:
            after_each(records)
    return records


def result_files(folder: Path) -> dict:
    """name -> text (small text files) or a size note, for every file a step wrote into its result folder."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        try:
            files[str(path.relative_to(folder))] = (path.read_text(encoding="utf-8") if size <= EMBED_BYTES
                                                    else f"({size} bytes: in gpu-suite-results.tar.gz)")
        except UnicodeDecodeError:
            files[str(path.relative_to(folder))] = f"({size} bytes, binary: in gpu-suite-results.tar.gz)"
    return files


# ---------------------------------------------------------------------------------------------------------
# The report


def summary_table(records: list[dict]) -> str:
    lines = ["| step | status | s | timeout s | detail | files |", "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']:.1f} | {r['timeout_s'] or ''} | "
                     f"{r['detail']} | {', '.join(r['files'])} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    env, inst = report["environment"], report["install"]
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    lines = [f"# guard GPU suite{' (CPU dry run)' if report['dry_run'] else ''}: {env.get('device', '?')}, {report['date']}",
             "",
             f"- device: {env.get('device')}; capability {env.get('capability', 'n/a')}; memory "
             f"{env.get('memory_gib', 'n/a')} GiB; SMs {env.get('sms', 'n/a')}; nvidia-smi: {env.get('nvidia_smi', 'n/a')}",
             f"- python {env.get('python')} ({env.get('executable')}); CUDA (torch) {env.get('torch_cuda')}; {versions}",
             f"- guard: {report['guard_source']['source']}; imported from {env.get('guard_file', env.get('guard_error'))}",
             f"- wheels: {inst['status']}; installed {', '.join(inst.get('wheels', [])) or 'none'}"
             + (f"; REFUSED (the machine has them): {', '.join(inst['refused'])}" if inst.get("refused") else ""),
             f"- carried packages' requirements the machine misses: {'; '.join(env.get('carried_unmet', [])) or 'none'}",
             f"- budget {report['budget_s']:.0f} s; suite wall time {report['wall_s']:.0f} s"
             + ("" if report["complete"] else " so far: INCOMPLETE (the call ended before the suite did)"), ""]
    if env.get("probe_error"):
        last = (env["probe_error"].strip().splitlines() or ["(no output)"])[-1]
        lines += [f"- the environment probe failed: {last}", ""]
    lines += [summary_table(report["steps"]), ""]
    for r in report["steps"]:
        lines += [f"## {r['name']}: {r['status']}", "", r["what"], "", f"`{r['command']}`", ""]
        for name, text in r["files"].items():
            if name.endswith(".md"):
                lines += [f"### {name}", "", text.strip(), ""]
        if r["tail"]:
            tail = "\n".join(r["tail"].splitlines()[-40:])
            lines += ["output tail:", "", "```", tail, "```", ""]
    return "\n".join(lines)


def write_outputs(out: Path, work: Path, report: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-suite.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "gpu-suite.md").write_text(markdown(report), encoding="utf-8")
    with open(out / "gpu-suite.log", "wb") as log:
        for r in report["steps"]:
            path = work / "logs" / f"{r['name']}.log"
            log.write(f"\n===== {r['name']}: {r['status']} =====\n$ {r['command']}\n".encode())
            if path.is_file():
                data = path.read_bytes()
                if len(data) > LOG_CAP_BYTES:
                    half = LOG_CAP_BYTES // 2
                    data = data[:half] + f"\n... {len(data) - 2 * half} bytes left out ...\n".encode() + data[-half:]
                log.write(data)
    with tarfile.open(out / "gpu-suite-results.tar.gz", "w:gz") as tar:
        for folder in ("results", "logs"):
            if (work / folder).is_dir():
                tar.add(work / folder, arcname=folder)
        tar.addfile(*_tar_text("gpu-suite.json", json.dumps(report, indent=1)))
    return [out / name for name in OUT_FILES]


def _tar_text(name: str, text: str):
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    return info, io.BytesIO(data)


def device_tag(env: dict, dry_run: bool, date: str) -> str:
    name = "cpu-dryrun" if dry_run else env.get("device", "gpu") if env.get("cuda") else "cpu"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") + "-" + date


# ---------------------------------------------------------------------------------------------------------
# Internal entry points and the main one


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dry-run", action="store_true", help="the CPU smoke command lines (what the test runs)")
    p.add_argument("--out", type=Path, help="where the report goes (default: $OUT, else WORK-out beside WORK)")
    p.add_argument("--wheels", type=Path, help="the carried wheels (default .whl on a GPU run; none in a dry run)")
    p.add_argument("--work", type=Path, help="scratch folder: installed wheels, results, logs (default: a new /tmp one)")
    p.add_argument("--budget", type=float, help=f"seconds for the whole suite (default {BUDGET_S}; dry run {DRY_BUDGET_S})")
    p.add_argument("--only", help="comma-separated step names to run (default: all, in table order)")
    p.add_argument("--list", action="store_true", help="print the steps and their command lines, then exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        print(json.dumps(probe(argv[1:])))
        return 0
    args = parse(argv)
    # Stopped from outside (SIGTERM): unwind, so that run_command ends the running step's process group.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    t_start, started = time.monotonic(), datetime.datetime.now(datetime.timezone.utc)
    budget = args.budget or (DRY_BUDGET_S if args.dry_run else BUDGET_S)
    deadline = t_start + budget
    steps = STEPS
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {s.name for s in STEPS})
        if unknown:
            print(f"error: unknown steps {unknown}; choose from {[s.name for s in STEPS]}", file=sys.stderr)
            return 2
        steps = [s for s in STEPS if s.name in wanted]
    if args.list:
        for s in steps:
            print(f"{s.name} (timeout {s.timeout_s} s; needs {', '.join(s.needs) or '-'}): {s.what}\n"
                  f"    gpu: {s.gpu}\n    dry: {s.dry}")
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="guard-gpu-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    out = args.out or Path(os.environ.get("OUT") or work.parent / f"{work.name}-out")  # not inside work: see below
    print(f"guard GPU suite{' (dry run)' if args.dry_run else ''}: budget {budget:.0f} s, work {work}, out {out}")

    # 1. the carried wheels
    wheel_dir = args.wheels or (None if args.dry_run else ROOT / ".whl")
    site = work / "site"
    if wheel_dir is None:
        install = {"status": "skipped: dry run (no --wheels)", "wheels": [], "refused": []}
    elif not wheel_dir.is_dir():
        install = {"status": f"skipped: no {wheel_dir} (run bench/carry_wheels.sh first)", "wheels": [], "refused": []}
    else:
        install = install_wheels(wheel_dir, site)
    print(f"wheels: {install['status']}" + (f"; refused {install['refused']}" if install["refused"] else ""))
    installed = install["status"] == "ok"
    source = choose_guard_source(site) if installed else {"source": "tree or the environment (no wheels installed)",
                                                          "tree_first": False, "differing_files": []}
    pythonpath = ([str(ROOT / "python")] if source["tree_first"] else []) + ([str(site)] if installed else [])
    env = step_env(args.dry_run, pythonpath, site if installed else None)

    # 2. the environment, as the steps will see it
    needs = sorted({m for s in STEPS for m in s.needs})
    environment = run_probe(env, needs)
    date = started.strftime("%Y-%m-%d")
    tag = device_tag(environment, args.dry_run, date)
    print(f"device: {environment.get('device')}; torch {environment.get('versions', {}).get('torch')}, "
          f"triton {environment.get('versions', {}).get('triton')}; guard: {source['source']}")

    # 3. the steps, and 4. the report, saved after each step and once more at the end
    report = {"suite": "guard GPU suite", "dry_run": args.dry_run, "date": date, "started": started.isoformat(),
              "budget_s": budget, "wall_s": 0.0, "tag": tag, "complete": False, "environment": environment,
              "install": install, "guard_source": source, "steps": []}

    def save(records: list[dict], complete: bool = False) -> list[Path]:
        report.update(steps=records, wall_s=time.monotonic() - t_start, complete=complete)
        return write_outputs(out, work, report)

    finished: list[dict] = []

    def after_each(records: list[dict]) -> None:
        finished[:] = records
        save(records)

    save([])  # the environment and the install, before any step can hang
    try:
        records = run_steps(steps, dry_run=args.dry_run, env=env, work=work, tag=tag, deadline=deadline,
                            importable=environment.get("importable"), cuda=bool(environment.get("cuda")),
                            after_each=after_each)
    except BaseException:  # stopped from outside mid-step: keep what finished, then go
        save(finished)
        raise
    written = save(records, complete=True)
    if args.work is None:  # a scratch folder of our own: its results are in the tarball now
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + summary_table(records))
    print(f"\nwall {report['wall_s']:.0f} s of a {budget:.0f} s budget; wrote " + ", ".join(str(p) for p in written))
    bad = [r for r in records if r["status"].startswith(("failed", "timed out"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
