#!/usr/bin/env bash
# Install the field agent into .venv on a fresh Debian 12 / Raspberry Pi OS machine and run the
# demo: a generated 60 s soundscape analysed with the shipped models. No broker, no network at run
# time. Extra arguments go to `chorus-agent demo` (e.g. --out DIR --duration-s 120).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_PACKAGES="python3-venv libportaudio2 libsndfile1"
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "${missing// /}" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q '.[agent]'
exec .venv/bin/chorus-agent demo "$@"
