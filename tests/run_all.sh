#!/usr/bin/env bash
# Builds qattn from scratch and runs the whole test suite: the C tests (CTest, which also runs
# the CLI's pytest checks) and the Python binding's pytest suite.
# Usage: bash tests/run_all.sh [build-dir]     (env QATTN_SANITIZE=ON for an ASan+UBSan build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
sanitize=${QATTN_SANITIZE:-OFF}

# Python test dependencies (PyPI); the C suite needs none of them.
python3 -c "import numpy, pytest" 2>/dev/null || python3 -m pip install -q numpy pytest

cuda_flag=()
[ "$sanitize" = ON ] && cuda_flag=(-DQATTN_CUDA=OFF) # the CUDA runtime and ASan do not mix
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DQATTN_SANITIZE="$sanitize" "${cuda_flag[@]}"
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j 2

if [ -d python/tests ] && [ "$sanitize" != ON ]; then
  QATTN_LIBRARY="$PWD/$build/libqattn.so" PYTHONPATH="$PWD/python" python3 -m pytest -q python/tests
fi
