#!/usr/bin/env bash
# Install the field agent into .venv on a fresh Debian 12 / Raspberry Pi OS machine and run the
# demo: the shipped 60 s synthetic soundscape analysed with the shipped trained bundle and scored
# against its annotation. No broker, no network, no TensorFlow at run time. Extra arguments go to
# `chorus-agent demo` (e.g. --out DIR; --synthetic for the hand-set plumbing bundle instead).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh

apt_ensure python3-venv libportaudio2 libsndfile1
venv_install '.[agent]'
exec .venv/bin/chorus-agent demo "$@"
