#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels the GPU machine lacks, for the GPU suite to carry there: guard's abi3
# wheel built from this tree, the peers bench_ops and bench_train measure guard against (liger-kernel, trl,
# cut-cross-entropy) and the dependencies of those and of guard that the machine does not have (it has no
# `datasets`; see MACHINE_PACKAGES in bench/check_wheels.py). The machine runs CPython 3.12 on Linux x86_64 with
# no network, so the downloads are cp312 manylinux x86_64 or pure-Python wheels, without dependencies; then
# bench/check_wheels.py resolves every wheel's Requires-Dist against the carried set and the machine's packages,
# installs them into a scratch folder and imports what the suite imports, and prints the sizes and the total.
#
#     bash bench/carry_wheels.sh          # from the repo root, in the guard venv (maturin and pip on PATH)
#
# Then, on a lent device (the `run` tool; see bench/README.md): command `bash bench/gpu_suite.sh`, carry [".whl"],
# timeout_s 540. Never add torch, triton, transformers or anything else the machine has (the check refuses it).
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned, so that every session carries what the suite was last run with; one version of each (pip refuses two).
PEERS=(trl==1.16.0 liger-kernel==0.8.5 cut-cross-entropy==25.1.1)
# What guard and trl need at import time that the machine lacks: datasets and its two missing dependencies
# (its others, e.g. fsspec, xxhash, pyarrow, huggingface-hub, are on the machine).
MISSING_DEPS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
WHEELS=.whl
PYTHON=${PYTHON:-python}

mkdir -p "$WHEELS"
rm -f "$WHEELS"/*.whl  # a stale second version of any package would stop the install there

echo "+ building guard's abi3 wheel (maturin build --release)"
"$PYTHON" -m maturin build --release --out "$WHEELS"

echo "+ downloading ${PEERS[*]} ${MISSING_DEPS[*]}"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" -d "$WHEELS" "${PEERS[@]}" "${MISSING_DEPS[@]}"

echo "+ checking them against the machine (bench/check_wheels.py --imports)"
"$PYTHON" bench/check_wheels.py "$WHEELS" --imports
du -ch "$WHEELS"/*.whl | tail -n 1
