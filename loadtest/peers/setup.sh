#!/usr/bin/env bash
# Installs the Python peers' dependencies from PyPI into loadtest/peers/.venv (once): the
# FastAPI peer's, the msgspec/granian peer's and the Triton peer's (PyTriton, which carries a
# tritonserver build with the Python backend).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    "fastapi==0.115.*" "uvicorn[standard]==0.32.*" "onnxruntime==1.32.0" "numpy>=1.26,<3" "orjson>=3.10" "pydantic>=2.9,<3" \
    "msgspec==0.23.*" "granian==2.8.*" "nvidia-pytriton==0.7.*"
echo "$venv/bin/python"
