#!/usr/bin/env bash
# The GPU suite's one command (bench/gpu_suite.py says what it runs and writes; bench/README.md how to call it).
# On a lent GPU machine, through the device tool's `run`: command `bash bench/gpu_suite.sh`, carry [".whl"]
# (filled here first by `bash bench/carry_wheels.sh`), timeout_s 540. Arguments pass through, e.g. --dry-run,
# --only STEP,STEP, --list. PYTHON chooses the interpreter (default python3: the machine's, with torch).
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -u bench/gpu_suite.py "$@"
