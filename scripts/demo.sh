#!/usr/bin/env bash
# Set up, then run the built-in model: with no arguments, one chat answer; otherwise `nexttoken ARGS`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
    set -- generate --chat "Explain in two sentences what a language model does."
fi
exec .venv/bin/nexttoken "$@"
