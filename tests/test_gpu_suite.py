"""bench/gpu_suite.py and bench/check_wheels.py, on the CPU: the whole suite's dry run (every step starts, writes
its files and lands in gpu-suite.md/json, `pytest -m gpu` recorded as skipped without CUDA, steps whose peers are
missing recorded as skipped), the GPU command lines use only flags the bench scripts know, the install step
(pip --no-index --no-deps --target) installs carried wheels and refuses a wheel of a package the machine has,
a failing or hanging step does not stop the suite, and the carried-wheel checks catch what they should.

    TRITON_INTERPRET=1 python -m pytest tests/test_gpu_suite.py -q
"""

import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import check_wheels  # noqa: E402
import gpu_suite  # noqa: E402


def make_wheel(folder: Path, name: str, version: str, code: str = "", requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of one module `name` holding `code`, with a RECORD pip accepts."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": code,
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


# ---------------------------------------------------------------------------------------------------------
# The whole suite, dry


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), "--dry-run", "--out", str(out),
                           "--work", str(work)], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_suite.OUT_FILES)
    assert len(gpu_suite.OUT_FILES) <= 8  # what the device tool brings back

    report = json.loads((out / "gpu-suite.json").read_text())
    steps = {r["name"]: r for r in report["steps"]}
    assert [r["name"] for r in report["steps"]] == [s.name for s in gpu_suite.STEPS]
    assert report["dry_run"] and report["install"]["status"].startswith("skipped: dry run")
    env_info = report["environment"]
    assert env_info["versions"]["torch"] and env_info["versions"]["triton"]
    assert env_info["cuda"] is False and env_info["device"].startswith("CPU")
    assert env_info["guard_file"].endswith("guard/__init__.py")

    # pytest -m gpu ran and found its tests, all skipped for want of CUDA
    gpu = steps["pytest-gpu"]
    assert gpu["status"] == "skipped: no CUDA" and gpu["seconds"] > 0, gpu
    assert "pytest-gpu.xml" in gpu["files"] and "skipped" in gpu["detail"]

    # each bench_ops step ran its smoke shape; both guard designs agree with torch
    for step in gpu_suite.STEPS:
        if not step.name.startswith("ops-"):
            continue
        r = steps[step.name]
        assert r["status"] == "ok", r
        (table,) = [json.loads(text) for name, text in r["files"].items() if name.endswith(".json")]
        rows = {row["impl"]: row for row in table["rows"]}
        for impl in ("guard", "guard-chunked", "guard-tiled"):
            assert rows[impl]["status"] == "ok" and rows[impl]["loss_rel_err"] < 1e-5, rows[impl]
        assert rows["liger"]["status"] == "needs CUDA"

    # the TRL-backed steps run where trl is installed, and say so where it is not
    trl_missing = not env_info["importable"]["trl"]
    for name, prefix in (("train-rm", "train-rm-cpu-dryrun-"), ("train-dpo", "train-dpo-cpu-dryrun-"),
                         ("ppo", "ppo-cpu-dryrun-")):
        r = steps[name]
        if trl_missing:
            assert r["status"] == "skipped: not installed: trl" and r["files"] == {}, r
        else:
            assert r["status"] == "ok", r
            assert any(f.startswith(prefix) and f.endswith(".md") for f in r["files"]), r["files"]

    md = (out / "gpu-suite.md").read_text()
    assert md.startswith("# guard GPU suite (CPU dry run)")
    assert "| step | status | s | timeout s | detail | files |" in md
    assert "## ops-16384x4096x128256: ok" in md and "| guard | 64 | 64 | 512 |" in md
    log = (out / "gpu-suite.log").read_text()
    assert "===== pytest-gpu: skipped: no CUDA =====" in log
    with tarfile.open(out / "gpu-suite-results.tar.gz") as tar:
        names = tar.getnames()
    assert "results/pytest-gpu/pytest-gpu.xml" in names and "gpu-suite.json" in names
    assert any(n.startswith("results/ops-4096x2048x32000/ops-") for n in names)
    # the summary table is the last thing printed (the device tool returns the output's tail), then the paths
    tail = done.stdout.splitlines()[-(len(gpu_suite.STEPS) + 4):]
    assert tail[0] == "| step | status | s | timeout s | detail | files |" and tail[-1].startswith("wall ")
    assert [line.split(" | ")[0][2:] for line in tail[2:-2]] == [s.name for s in gpu_suite.STEPS]


# ---------------------------------------------------------------------------------------------------------
# The command lines


def _help_text(script: str, sub: str | None, capsys) -> str:
    module = __import__(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(([sub] if sub else []) + ["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


# ids that are not the word "gpu", which conftest reads as the gpu marker and skips without CUDA
@pytest.mark.parametrize("mode", [pytest.param("gpu", id="gpu-command"), pytest.param("dry", id="dry-command")])
def test_every_step_uses_only_flags_its_script_knows(mode, capsys):
    for step in gpu_suite.STEPS:
        args = shlex.split(getattr(step, mode))
        if args[:2] == ["-m", "pytest"]:
            assert args[2:4] == ["-m", "gpu"]
            assert "gpu:" in (ROOT / "pyproject.toml").read_text()  # the marker is registered (--strict-markers)
            continue
        script, rest = Path(args[0]).stem, args[1:]
        if script == "bench_ops":  # the implementations and shapes it is given are ones it knows
            import bench_ops

            values = dict(zip(rest, rest[1:]))
            assert set(values["--impls"].split(",")) <= set(bench_ops.IMPLS), values["--impls"]
            if "--shapes" in values:
                assert bench_ops.parse_shapes(values["--shapes"], bench_ops.TOKENS_PER_SEQ)
        sub = rest[0] if rest and not rest[0].startswith("-") else None
        known = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", _help_text(script, sub, capsys)))
        for flag in (a for a in rest if a.startswith("--")):
            assert flag in known, f"{step.name} ({mode}): {script} {sub or ''} has no {flag}"


def test_unknown_only_step_is_an_error(capsys):
    assert gpu_suite.main(["--only", "ops-1x2x3", "--list"]) == 2
    assert "unknown steps ['ops-1x2x3']" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Installing the carried wheels


def test_install_takes_carried_wheels_and_refuses_machine_packages(tmp_path):
    wheels, site = tmp_path / "whl", tmp_path / "site"
    wheels.mkdir()
    make_wheel(wheels, "carriedpkg", "1.0", "VALUE = 41\n", requires=("surelymissing>=1", "pywin32; sys_platform == 'win32'"))
    make_wheel(wheels, "torch", "99.0", "raise ImportError('the carried torch shadowed the real one')\n")
    record = gpu_suite.install_wheels(wheels, site)
    assert record["status"] == "ok", record
    assert record["refused"] == ["torch-99.0-py3-none-any.whl"]
    assert record["wheels"] == ["carriedpkg-1.0-py3-none-any.whl"]
    assert (site / "carriedpkg" / "__init__.py").is_file() and not (site / "torch").exists()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import carriedpkg, torch; print(carriedpkg.VALUE + 1, torch.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    value, version = done.stdout.split()
    assert value == "42" and version == torch.__version__
    # --no-deps: pip never looked at the requirement; the probe names it (markers for other platforms skipped)
    assert gpu_suite.unmet_requirements(str(site)) == ["carriedpkg needs surelymissing>=1: not installed"]
    # a second install over the same folder (a rerun on a warm machine) replaces, not fails
    assert gpu_suite.install_wheels(wheels, site)["status"] == "ok"


def test_install_of_an_empty_folder_is_a_recorded_skip(tmp_path):
    record = gpu_suite.install_wheels(tmp_path, tmp_path / "site")
    assert record["status"].startswith("skipped: no wheels")


def _package(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / "guard" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "guard" / name).write_text(text)
    return folder


def test_guard_comes_from_the_wheel_unless_the_tree_changed_since(tmp_path):
    site = _package(tmp_path / "site", {"__init__.py": "A = 1\n", "kernels/tuning.py": "BLOCK = 64\n",
                                        "_rust.abi3.so": "not really a library"})
    tree = _package(tmp_path / "tree", {"__init__.py": "A = 1\n", "kernels/tuning.py": "BLOCK = 64\n"})
    same = gpu_suite.choose_guard_source(site, tree)
    assert same["source"] == "wheel" and not same["tree_first"]
    (tree / "guard" / "kernels" / "tuning.py").write_text("BLOCK = 128\n")  # a tuning edit between two runs
    changed = gpu_suite.choose_guard_source(site, tree)
    assert changed["tree_first"] and changed["differing_files"] == ["kernels/tuning.py"]
    assert changed["copied"] == ["_rust.abi3.so"] and (tree / "guard" / "_rust.abi3.so").is_file()


# ---------------------------------------------------------------------------------------------------------
# Running steps: failures, hangs, skips and the budget


def test_a_failing_or_hanging_step_does_not_stop_the_suite(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    steps = [
        gpu_suite.Step("fails", "exits 3", gpu="-c 'import sys; print(\"bad\"); sys.exit(3)'", dry="", timeout_s=60),
        gpu_suite.Step("hangs", "sleeps past its timeout", gpu=f"-c {shlex.quote(hang)}", dry="", timeout_s=3),
        gpu_suite.Step("missing", "needs a module", gpu="-c pass", dry="", timeout_s=60, needs=("surely_not_a_module",)),
        gpu_suite.Step("writes", "writes a result", gpu="-c \"open('{results}/r-{tag}.md', 'w').write('| a |')\"",
                       dry="", timeout_s=60),
        gpu_suite.Step("late", "after the budget", gpu="-c pass", dry="", timeout_s=60),
    ]
    (tmp_path / "logs").mkdir()
    lines, saved = [], []
    t0 = time.monotonic()
    records = gpu_suite.run_steps(steps, dry_run=False, env=gpu_suite.step_env(False, [], None), work=tmp_path,
                                  tag="dev-date", deadline=t0 + 25, importable={"surely_not_a_module": False},
                                  cuda=False, min_step_s=1, log=lines.append,
                                  after_each=lambda so_far: saved.append([r["status"] for r in so_far]))
    assert [len(s) for s in saved] == [1, 2, 3, 4, 5]  # the report is saved after every step, not only at the end
    assert saved[1] == ["failed (exit 3)", "timed out after 3 s"]
    by_name = {r["name"]: r for r in records}
    assert by_name["fails"]["status"] == "failed (exit 3)" and "bad" in by_name["fails"]["tail"]
    assert by_name["hangs"]["status"] == "timed out after 3 s" and by_name["hangs"]["returncode"] is None
    assert by_name["missing"]["status"] == "skipped: not installed: surely_not_a_module"
    assert by_name["writes"]["status"] == "ok" and by_name["writes"]["files"] == {"r-dev-date.md": "| a |"}
    assert by_name["late"]["status"] == "ok"
    # the hanging step's whole process group went with it: its grandchild is gone (or a zombie awaiting reaping)
    pid = int(pid_file.read_text())
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()
    # and the budget: with the deadline already past, nothing more starts
    late = gpu_suite.run_steps(steps[-1:], dry_run=False, env=gpu_suite.step_env(False, [], None), work=tmp_path,
                               tag="t", deadline=time.monotonic() - 1, importable={}, cuda=False, log=lines.append)
    assert late[0]["status"].startswith("not run: 0 s of the budget left")
    assert any("fails: failed (exit 3)" in line for line in lines)


# ---------------------------------------------------------------------------------------------------------
# check_wheels: the requirement resolution and the import closure


def test_requirements_resolve_against_the_carried_set_and_the_machine(tmp_path):
    wheels = [
        make_wheel(tmp_path, "carriedpkg", "1.0", requires=(
            "helperpkg>=2", "jinja2", "torch>=3", "nowhere-pkg", "winonly; sys_platform == 'win32'",
            "devonly; extra == 'dev'")),
        make_wheel(tmp_path, "helperpkg", "1.5"),
        make_wheel(tmp_path, "transformers", "9.9"),
    ]
    errors, warnings, notes = check_wheels.check_requirements([check_wheels.read_metadata(w) for w in wheels])
    assert any("transformers-9.9" in e and "shadow" in e for e in errors)
    assert "carriedpkg needs helperpkg>=2: the carried version is 1.5" in errors
    assert "carriedpkg needs nowhere-pkg: neither carried nor on the machine" in errors
    assert len(errors) == 3  # the markers for Windows and for an extra were not requirements on the machine
    assert warnings == ["carriedpkg needs torch>=3: the machine version is 2.11.0"]
    assert notes == ["carriedpkg needs, from the machine (versions not known here): jinja2"]
    (tmp_path / "other").mkdir()
    twice = [check_wheels.read_metadata(wheels[1]),
             check_wheels.read_metadata(make_wheel(tmp_path / "other", "helperpkg", "2.0"))]
    assert any("a second wheel of helperpkg" in e for e in check_wheels.check_requirements(twice)[0])


def test_import_closure_names_what_a_carried_package_imports_from_nowhere(tmp_path):
    clean = make_wheel(tmp_path, "tidypkg", "1.0", "import yaml, json\n")  # pyyaml: on the machine
    errors, notes = check_wheels.check_imports([clean], {"tidypkg"}, probes=["import tidypkg"])
    assert errors == [], errors
    assert any("tidypkg" in n and "pyyaml" in n for n in notes)
    # maturin (a build tool here) is not on the GPU machine: a carried package importing it must be named
    needy = make_wheel(tmp_path, "needypkg", "1.0", "import maturin\n")
    errors, _ = check_wheels.check_imports([needy], {"needypkg"}, probes=["import needypkg", "import not_a_module_x"])
    assert any(e.startswith("maturin (module maturin) was imported by needypkg") for e in errors), errors
    assert any("`import not_a_module_x` failed: ModuleNotFoundError" in e for e in errors), errors
