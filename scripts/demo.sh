#!/usr/bin/env bash
# Install the field agent into .venv on a fresh Debian 12 / Raspberry Pi OS machine and run the
# demo: a generated 60 s soundscape analysed with the shipped models. No broker, no network at run
# time. Extra arguments go to `chorus-agent demo` (e.g. --out DIR --duration-s 120).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh

apt_ensure python3-venv libportaudio2 libsndfile1
venv_install '.[agent]'
exec .venv/bin/chorus-agent demo "$@"
