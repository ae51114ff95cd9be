#!/usr/bin/env bash
# The demo in one command on a fresh Debian/Ubuntu machine: installs what is missing (MariaDB and Redis from the
# distribution, the project into .venv), then migrates a live onboarding portal between throwaway local servers
# while a workload writes to it (python -m austasync.demo). Arguments go to the demo: --seconds 0 streams until
# Ctrl-C, --users N, --rate OPS, --keep; --help lists them.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_pkgs+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need_pkgs+=(mariadb-client)
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || need_pkgs+=(python3)
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
  # the packages start system-wide servers on the standard ports; the demo starts its own on free ports
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import austasync.demo' >/dev/null 2>&1; then
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e .
fi
exec .venv/bin/python -m austasync.demo "$@"
