"""Check the wheels that bench/carry_wheels.sh put in .whl/ against what the GPU machine already has, here,
without that machine (it has no network, so whatever guard, trl, liger-kernel and cut-cross-entropy need there
must either be on it already or travel as a wheel).

    python bench/check_wheels.py .whl              # each wheel's name, version and size, the total, and every
                                                   # Requires-Dist resolved against the carried set + the machine
    python bench/check_wheels.py .whl --imports    # also install them into a scratch folder (pip --no-index
                                                   # --no-deps --target), import what the GPU suite imports, and
                                                   # name every distribution those imports loaded

Exit status 1 when a wheel carries a package the machine already has (it would shadow the machine's copy: its
torch, triton or transformers above all), two wheels carry one package, a requirement (markers evaluated for
CPython 3.12 on Linux x86_64) is neither carried nor on the machine, the wheels pass the 64 MiB a device call can
carry, or (--imports) an import fails or loads a distribution that is neither carried nor on the machine. A
machine version that misses a carried wheel's version specifier is only a warning: few of the machine's versions
are known here, and guard's own `triton>=3.7` is for the CPU interpreter (the machine keeps its triton 3.6).
The import check runs on this machine's Python and packages, so it proves the import closure, not the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

CARRY_LIMIT_BYTES = 64 * 2**20  # a device call carries the working tree and carried paths up to 64 MiB in all

# What the GPU machine (device kind nvidia-h200, image 'cuda') already has: the package list that
# /work/.library/device/KINDS.md gives, as read on such a machine on 2026-11-17. Nothing here may be carried.
MACHINE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())

# The few versions known (KINDS.md's pip list row, 2026-11, and the issue): used to warn, never to fail.
MACHINE_VERSIONS = {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
    "sentence-transformers": "6.0.1", "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0",
    "triton": "3.6.0",
}

# The machine's interpreter, for evaluating requirement markers.
MACHINE_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "extra": "",
}

# What the GPU suite's steps import from the carried wheels (bench_ops' peers, bench_train's TRL trainers, guard).
IMPORT_PROBES = [
    "import guard, guard._rust, guard.ops, guard.data, guard.models, guard.rollout",
    "import guard.train.rm, guard.train.pref, guard.train.ppo",
    "import datasets",
    "from trl import RewardConfig, RewardTrainer, DPOConfig, DPOTrainer",
    "from trl.kernels import ChunkedLogProbFunction",
    "from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE",
    "from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss",
    "from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss",
    "from cut_cross_entropy import linear_cross_entropy",
]


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: 'Liger_Kernel' and 'liger-kernel' are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path | str) -> str:
    """The normalized distribution name a wheel's file name carries (its first dash-separated field)."""
    return normalize(Path(path).name.split("-")[0])


def read_metadata(wheel: Path) -> dict:
    """Name, version, Requires-Python and Requires-Dist lines from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta_path = next((n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if meta_path is None:
            raise ValueError(f"{wheel.name}: no *.dist-info/METADATA inside: not a wheel")
        meta = Parser().parsestr(zf.read(meta_path).decode("utf-8"))
    return {"name": normalize(meta["Name"]), "version": meta["Version"], "file": wheel.name,
            "bytes": wheel.stat().st_size, "requires_python": meta.get("Requires-Python"),
            "requires": meta.get_all("Requires-Dist") or []}


def check_requirements(wheels: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(errors, warnings, notes) for a set of wheels as the machine would see them."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    errors, warnings, notes = [], [], []
    carried: dict[str, dict] = {}
    for w in wheels:
        if w["name"] in MACHINE_PACKAGES:
            errors.append(f"{w['file']}: the machine already has {w['name']}; carrying it would shadow its copy")
        if w["name"] in carried:
            errors.append(f"{w['file']}: a second wheel of {w['name']} (also {carried[w['name']]['file']}); "
                          "pip refuses to install two versions")
        carried[w["name"]] = w
        if w["requires_python"] and not SpecifierSet(w["requires_python"]).contains(MACHINE_MARKERS["python_full_version"]):
            errors.append(f"{w['file']}: Requires-Python {w['requires_python']} excludes the machine's 3.12")
    for w in wheels:
        unknown = []  # on the machine, version not known here: one note per wheel
        for line in w["requires"]:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(MACHINE_MARKERS):
                continue  # an extra, or another platform
            name = normalize(req.name)
            if name in carried:
                have, where = carried[name]["version"], "carried"
            elif name in MACHINE_PACKAGES:
                have, where = MACHINE_VERSIONS.get(name), "machine"
            else:
                errors.append(f"{w['name']} needs {line}: neither carried nor on the machine")
                continue
            if have is None:
                unknown.append(str(req))
            elif req.specifier and not req.specifier.contains(have, prereleases=True):
                (errors if where == "carried" else warnings).append(
                    f"{w['name']} needs {req}: the {where} version is {have}")
        if unknown:
            notes.append(f"{w['name']} needs, from the machine (versions not known here): {', '.join(unknown)}")
    return errors, warnings, notes


def install(wheels: list[Path], target: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    """pip install the wheels into `target` as the GPU suite does: no index, no dependencies, nothing compiled."""
    cmd = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
           "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)]
    return subprocess.run(cmd, capture_output=True, text=True)


_IMPORT_SCRIPT = r"""
import importlib.metadata, json, sys

first_importer = {}  # top-level module -> the module whose code imported it first


class RecordImporter:
    def find_spec(self, name, path=None, target=None):
        if "." not in name and name not in first_importer:
            frame = sys._getframe(1)
            while frame is not None and (frame.f_code.co_filename.startswith("<frozen")
                                         or frame.f_globals.get("__name__", "").startswith("importlib")):
                frame = frame.f_back
            first_importer[name] = frame.f_globals.get("__name__") if frame is not None else None
        return None  # only watching: the real finders find it


sys.meta_path.insert(0, RecordImporter())
failed = {}
for stmt in json.loads(sys.argv[1]):
    try:
        exec(stmt, {"__name__": "__probe__"})
    except Exception as e:
        failed[stmt] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
owners = importlib.metadata.packages_distributions()
loaded = {}
for mod in list(sys.modules):
    top = mod.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top.startswith("_"):
        continue
    if top not in owners and not hasattr(sys.modules[mod], "__file__"):
        continue  # made by an extension at run time (cython_runtime) or a namespace: nothing to carry
    importer = first_importer.get(top)
    importer_top = importer.split(".")[0] if importer else None
    for dist in owners.get(top, ["?" + top]):
        loaded.setdefault(dist, {"module": top, "importer": importer,
                                 "importer_dists": owners.get(importer_top, [importer_top] if importer_top else [])})
print(json.dumps({"failed": failed, "loaded": loaded}))
"""


def check_imports(wheels: list[Path], carried: set[str], probes: list[str] = IMPORT_PROBES) -> tuple[list[str], list[str]]:
    """Install the wheels into a scratch folder, run the probes (import statements) with it as PYTHONPATH, and return
    (errors, notes). An error: a probe failed, or a carried package (or the probe itself) imported a distribution
    that is neither carried nor on the machine. A distribution that only a machine package imported is a note:
    this machine's copy of that package is another version than the machine's, with other imports."""
    errors, notes = [], []
    with tempfile.TemporaryDirectory(prefix="carry-check-") as tmp:
        local = [w for w in wheels if _installable_here(w)]
        for w in sorted(set(wheels) - set(local)):
            notes.append(f"{w.name}: not installable on this Python {sys.version_info.major}.{sys.version_info.minor}; "
                         "the import check uses this machine's copy of it, if any")
        done = install(local, Path(tmp))
        if done.returncode != 0:
            return [f"pip install --no-index --no-deps --target failed: {done.stderr.strip()[-500:]}"], notes
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
        env.update(PYTHONPATH=tmp, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        run = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT, json.dumps(probes)],
                             capture_output=True, text=True, env=env, cwd=tmp)
        if run.returncode != 0:
            return [f"the import probe crashed: {run.stderr.strip()[-800:]}"], notes
        found = json.loads(run.stdout.strip().splitlines()[-1])
    for stmt, err in found["failed"].items():
        errors.append(f"`{stmt}` failed: {err}")
    # A distribution is the machine's business when only machine packages, or distributions they brought in
    # themselves, imported it (a fixed point over the import chains).
    loaded = {normalize(d): (how, [normalize(x) for x in how["importer_dists"]]) for d, how in found["loaded"].items()}
    machine_side = set(MACHINE_PACKAGES)
    while True:
        more = {d for d, (_, by) in loaded.items() if d not in machine_side and d not in carried
                and by and all(x in machine_side for x in by)}
        if not more:
            break
        machine_side |= more
    for dist, (how, by) in sorted(loaded.items()):
        if dist in carried or dist in MACHINE_PACKAGES:
            continue
        line = f"{dist} (module {how['module']}) was imported by {how['importer']}"
        if dist in machine_side:
            notes.append(line + f" ({', '.join(by)}): a machine package's import here, where its version differs")
        else:
            errors.append(line + ": neither carried nor on the machine")
    names = sorted(normalize(d) for d in found["loaded"])
    notes.append(f"the imports loaded {len(names)} distributions: " + ", ".join(names))
    return errors, notes


def _installable_here(wheel: Path) -> bool:
    """Whether this interpreter's pip would take the wheel (one of its tags is ours): not a py312-only one on 3.11."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    return not parse_wheel_filename(wheel.name)[3].isdisjoint(sys_tags())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel_dir", type=Path, help="the folder of wheels (.whl/)")
    parser.add_argument("--imports", action="store_true", help="also install them in a scratch folder and import")
    args = parser.parse_args(argv)
    paths = sorted(args.wheel_dir.glob("*.whl"))
    if not paths:
        print(f"error: no wheels in {args.wheel_dir}", file=sys.stderr)
        return 1
    wheels = [read_metadata(p) for p in paths]
    errors, warnings, notes = check_requirements(wheels)
    total = sum(w["bytes"] for w in wheels)
    if total > CARRY_LIMIT_BYTES:
        errors.append(f"{total / 2**20:.1f} MiB of wheels: over the {CARRY_LIMIT_BYTES / 2**20:.0f} MiB a call carries")
    if args.imports:
        more_errors, more_notes = check_imports(paths, {w["name"] for w in wheels})
        errors += more_errors
        notes += more_notes

    print("| wheel | package | version | KiB |\n|---|---|---|---|")
    for w in wheels:
        print(f"| {w['file']} | {w['name']} | {w['version']} | {w['bytes'] / 1024:.0f} |")
    print(f"| total: {len(wheels)} wheels | | | {total / 1024:.0f} ({total / 2**20:.2f} MiB) |")
    for kind, lines in (("note", notes), ("warning", warnings), ("error", errors)):
        for line in lines:
            print(f"{kind}: {line}")
    print("ok: every requirement is carried or on the machine" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
