#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 / Raspberry Pi OS machine, then
# run it. Used verbatim by the README and by CI (.ci/run). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# System parts the tests use for real: a Mosquitto broker, PortAudio (sounddevice), libsndfile,
# PulseAudio (a real, paced "microphone" through a null sink) and systemd-analyze.
APT_PACKAGES="python3-venv mosquitto mosquitto-clients libportaudio2 libsndfile1 pulseaudio pulseaudio-utils libasound2-plugins"
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
# TensorFlow (the `train` extra) only where wheels exist; tests that need it skip elsewhere.
EXTRAS="dev"
case "$(uname -m)" in x86_64|amd64) EXTRAS="dev,train" ;; esac
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"

.venv/bin/ruff check agent modeltools tests
.venv/bin/mypy agent
.venv/bin/python -m pytest "$@"
