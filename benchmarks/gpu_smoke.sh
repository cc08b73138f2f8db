#!/usr/bin/env bash
# GPU smoke test of the real-scale path: installs the gpu extra (SKIP_INSTALL=1 skips it; PIP_FIND_LINKS=<wheelhouse>
# works offline), then runs benchmarks/gpu_smoke.py (its docstring lists the stages; arguments are passed on).
# Usage, from anywhere:  bash benchmarks/gpu_smoke.sh [--stages preflight,build,...] [--keep-checkpoints]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  timeout 300 "$PY" -m pip install -q -e ".[gpu]" || echo "gpu extra not installed: the preflight will say what is missing"
fi
exec "$PY" benchmarks/gpu_smoke.py "$@"
