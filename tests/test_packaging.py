"""The wheel: built with maturin from this checkout, it must carry the Triton sources as guard/kernels
(the top-level `kernels/` folder mirrors them with per-file symlinks and is no package), the Rust extension as an abi3 module, the
type stub, py.typed and the default job's assets; and unpacked on its own it must import."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_kernels_mirrors_the_package_and_is_not_a_package():
    """kernels/ holds one symlink per kernel source and no __init__.py, so it is at most a namespace portion
    and can never shadow a regular top-level `kernels` package of another distribution."""
    top, package = ROOT / "kernels", ROOT / "python" / "guard" / "kernels"
    assert top.is_dir() and not top.is_symlink() and not (top / "__init__.py").exists()
    sources = {p.name for p in package.glob("*.py")} - {"__init__.py"}
    links = {p.name for p in top.glob("*.py")}
    assert links == sources, f"kernels/ out of step with python/guard/kernels/: {sorted(links ^ sources)}"
    for name in links:
        assert (top / name).is_symlink() and (top / name).resolve() == (package / name).resolve(), name


def _run_from_root(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(ROOT / "python")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_running_from_the_repo_root_does_not_shadow_the_pypi_kernels_package():
    """transformers imports the Hugging Face `kernels` distribution; `python -m` from the repository root puts
    the root first on sys.path, where guard's kernels/ folder lives."""
    if importlib.util.find_spec("kernels") is None or "site-packages" not in str(importlib.util.find_spec("kernels").origin):
        pytest.fail("the PyPI package `kernels` (a transformers dependency) is not installed")
    probe = _run_from_root("-c", "import kernels, transformers.integrations.hub_kernels; print(kernels.__file__)")
    assert probe.returncode == 0, probe.stderr
    assert "site-packages" in probe.stdout and str(ROOT / "kernels") not in probe.stdout, probe.stdout
    for argv in (["-m", "guard.train", "--help"], ["-m", "guard.train", "rm", "--help"]):
        run = _run_from_root(*argv)
        assert run.returncode == 0 and "usage" in (run.stdout + run.stderr).lower() or "recipes" in run.stdout, run.stderr


@pytest.mark.slow
def test_wheel_contents_and_import(tmp_path):
    maturin = shutil.which("maturin", path=os.path.dirname(sys.executable)) or shutil.which("maturin")
    if maturin is None:
        pytest.fail("maturin is not installed: it is part of the dev extra (pip install -e '.[dev]')")
    out = tmp_path / "dist"
    build = subprocess.run(
        [maturin, "build", "--release", "--quiet", "--interpreter", sys.executable, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = out.glob("*.whl")
    assert "-abi3-" in wheel.name, f"not an abi3 wheel: {wheel.name}"
    names = set(zipfile.ZipFile(wheel).namelist())
    kernel_sources = {p.relative_to(ROOT / "python").as_posix() for p in (ROOT / "python/guard/kernels").glob("*.py")}
    assert "guard/kernels/__init__.py" in kernel_sources and kernel_sources <= names
    assert {"guard/__init__.py", "guard/losses.py", "guard/py.typed", "guard/_rust.pyi"} <= names
    # the default job's bundled sample, tokenizer and preset (python -m guard.train from a wheel install)
    assert {"guard/assets/sample_pairs.jsonl", "guard/assets/tokenizer.json", "guard/assets/tiny-llama.json"} <= names
    assert any(n.startswith("guard/_rust") and n.endswith(".so") for n in names), sorted(names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = "import guard, guard._rust, guard.kernels; print(guard._rust.__file__); print(guard._rust.dedup(['p', 'p'], ['r', 'r']))"
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(site)), lines
    assert lines[1] == "[0]"
