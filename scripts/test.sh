#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 / Raspberry Pi OS machine, then
# run it. Used verbatim by the README and by CI (.ci/run). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/_setup.sh

# System parts the tests use for real: a Mosquitto broker and its clients, PortAudio
# (sounddevice), libsndfile, PulseAudio (a real, paced "microphone" through a null sink),
# PostgreSQL (the collector's server store; the tests start their own cluster) and openssl
# (throw-away certificates for the TLS broker), systemd (systemd-analyze verify of the units).
APT_PACKAGES="python3-venv mosquitto mosquitto-clients libportaudio2 libsndfile1 pulseaudio pulseaudio-utils libasound2-plugins postgresql openssl systemd"
apt_ensure $APT_PACKAGES

# TensorFlow (the `train` extra) only where wheels exist; tests that need it skip elsewhere.
EXTRAS="dev"
case "$(uname -m)" in x86_64|amd64) EXTRAS="dev,train" ;; esac
venv_install -e ".[$EXTRAS]"

.venv/bin/ruff check agent modeltools tests
.venv/bin/mypy agent
.venv/bin/python -m pytest "$@"
