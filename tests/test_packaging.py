"""The wheel: built with maturin from this checkout, it must carry the Triton sources as guard/kernels
(the top-level `kernels` symlink resolves into the package), the Rust extension as an abi3 module, the
type stub, py.typed and the default job's assets; and unpacked on its own it must import."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_symlink_points_into_the_package():
    link = ROOT / "kernels"
    assert link.is_symlink() and link.resolve() == (ROOT / "python" / "guard" / "kernels").resolve()


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
