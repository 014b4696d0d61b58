#!/usr/bin/env bash
# Developer entry point. Creates .venv (pinned dev requirements) when missing or out of date, then:
#   ./dev.sh demo [args]    the embedded demo (toy model) -> outputs/demo/
#   ./dev.sh test [args]    the test suite (pytest; add -m slow for the slow tests)
#   ./dev.sh lint           ruff
#   ./dev.sh py ARGS        any python command inside the venv, e.g. ./dev.sh py -m lib_chroma curves --json
set -euo pipefail
cd "$(dirname "$0")"
venv=.venv
stamp="$venv/.requirements.sha256"
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up $venv (pinned requirements-dev.txt; a few minutes the first time)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r requirements-dev.txt >&2
  echo "$want" > "$stamp"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning,ignore::UserWarning}"
cmd="${1:-test}"; shift || true
case "$cmd" in
  demo) exec "$venv/bin/python" -m lib_chroma demo "$@" ;;
  test) exec "$venv/bin/python" -m pytest -q "$@" ;;
  lint) exec "$venv/bin/ruff" check . "$@" ;;
  py) exec "$venv/bin/python" "$@" ;;
  *) echo "usage: ./dev.sh {demo|test|lint|py} [args]" >&2; exit 2 ;;
esac
