#!/usr/bin/env bash
# Build llama-cpp-python into .venv for benchmarks/bench_llama_cpp.py only (it is no dependency of
# nexttoken). Default flags build AMX kernels that die with SIGILL on these machines, so AMX is off
# and the AVX-512 family on. Compiling takes several minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
.venv/bin/python -m pip install --quiet --disable-pip-version-check "llama-cpp-python==0.3.36"
