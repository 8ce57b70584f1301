#!/usr/bin/env bash
# Install (or remove) the Chorus agent as a systemd service on Raspberry Pi OS Bookworm (64-bit)
# or Debian 12, or with --collector the central collector on a server. Run from a clone of the
# repository:
#
#   sudo systemd/install.sh              # install or upgrade the agent; safe to run again
#   sudo systemd/install.sh --collector  # install or upgrade the collector (the server side)
#   sudo systemd/install.sh --uninstall  # stop and remove the services and the program
#                                        # (keeps /etc/chorus and /var/lib/chorus; add --purge)
#
# What it does: apt packages (PortAudio, libsndfile, Python venv), a system user `chorus` in the
# `audio` group, a virtual environment with the `agent` extra in /opt/chorus/venv, the config at
# /etc/chorus/agent.yaml (from config/agent.example.yaml, never overwritten), an empty MQTT password
# credential /etc/chorus/mqtt-password (mode 0600), the state directory /var/lib/chorus (models,
# outbox, clips), a journald size cap (200 MB, one month), and the unit chorus-agent.service,
# enabled and (re)started.
#
# With --collector instead: the `collector` extra (MQTT 5 subscriber, JSON Schema, PostgreSQL
# client) in the same venv, /etc/chorus/collector.yaml (from config/collector.example.yaml, never
# overwritten), empty credentials /etc/chorus/collector-mqtt-password and
# /etc/chorus/collector-postgres-dsn (mode 0600), and chorus-collector.service, enabled and
# (re)started. No audio packages, no audio group. The broker (Mosquitto) and PostgreSQL, if
# used, are yours to install: docs/mqtt.md.
#
# Testing: --root DIR stages every file under DIR and skips apt, user creation and systemctl;
# --no-venv skips the virtual environment.
set -euo pipefail

ROOT=""
UNINSTALL=0
PURGE=0
VENV=1
ROLE=agent
while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) UNINSTALL=1 ;;
    --purge) UNINSTALL=1; PURGE=1 ;;
    --root) ROOT="${2:?--root needs a directory}"; shift ;;
    --no-venv) VENV=0 ;;
    --collector) ROLE=collector ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

SRC="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="$ROOT/opt/chorus"
ETC="$ROOT/etc/chorus"
STATE="$ROOT/var/lib/chorus"
UNIT_DIR="$ROOT/etc/systemd/system"
LIVE=1  # act on the running system (apt, users, systemctl)
[ -z "$ROOT" ] || LIVE=0

say() { printf 'chorus install: %s\n' "$*"; }

if [ "$LIVE" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo $0)" >&2
  exit 2
fi

if [ "$UNINSTALL" -eq 1 ]; then
  if [ "$LIVE" -eq 1 ]; then
    systemctl disable --now chorus-agent.service chorus-collector.service 2>/dev/null || true
  fi
  rm -f "$UNIT_DIR/chorus-agent.service" "$UNIT_DIR/chorus-collector.service"
  rm -f "$ROOT/etc/systemd/journald.conf.d/chorus.conf"
  [ "$LIVE" -eq 0 ] || systemctl daemon-reload
  rm -rf "$PREFIX"
  if [ "$PURGE" -eq 1 ]; then
    rm -rf "$ETC" "$STATE"
    if [ "$LIVE" -eq 1 ] && id chorus >/dev/null 2>&1; then userdel chorus; fi
    say "removed the service, the program, the config and the state (models, outbox, clips)"
  else
    say "removed the service and the program; kept $ETC and $STATE (--purge removes them)"
  fi
  exit 0
fi

if [ "$LIVE" -eq 1 ]; then
  say "installing system packages"
  apt-get update -qq
  if [ "$ROLE" = collector ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
  else
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3-venv libportaudio2 libsndfile1 alsa-utils
  fi
  if ! id chorus >/dev/null 2>&1; then
    say "creating system user chorus"
    useradd --system --home-dir /var/lib/chorus --no-create-home --shell /usr/sbin/nologin chorus
  fi
  if [ "$ROLE" = agent ]; then
    usermod -a -G audio chorus
    if ldconfig -p 2>/dev/null | grep -q libedgetpu.so.1; then
      say "Coral Edge TPU runtime found (libedgetpu): set inference.accelerator: edgetpu to use it"
    fi
  fi
fi

install -d -m 0755 "$PREFIX" "$UNIT_DIR"
install -d -m 0750 "$ETC" "$STATE"
if [ "$VENV" -eq 1 ]; then
  say "installing the $ROLE into $PREFIX/venv"
  [ -x "$PREFIX/venv/bin/python" ] || python3 -m venv "$PREFIX/venv"
  "$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
  "$PREFIX/venv/bin/python" -m pip install -q --upgrade "$SRC[$ROLE]"
fi

if [ "$ROLE" = collector ]; then
  if [ ! -f "$ETC/collector.yaml" ]; then
    install -m 0640 "$SRC/config/collector.example.yaml" "$ETC/collector.yaml"
    say "wrote $ETC/collector.yaml (edit it, then: sudo systemctl restart chorus-collector)"
  else
    say "kept the existing $ETC/collector.yaml"
  fi
  for secret in collector-mqtt-password collector-postgres-dsn; do
    [ -f "$ETC/$secret" ] || install -m 0600 /dev/null "$ETC/$secret"
  done
elif [ ! -f "$ETC/agent.yaml" ]; then
  # Start from the documented example, with paths that suit a service.
  sed -e "s|^device_id: chorus-dev|device_id: $(hostname -s 2>/dev/null || echo chorus-dev)|" \
    "$SRC/config/agent.example.yaml" > "$ETC/agent.yaml"
  chmod 0640 "$ETC/agent.yaml"
  say "wrote $ETC/agent.yaml (edit it, then: sudo systemctl restart chorus-agent)"
else
  say "kept the existing $ETC/agent.yaml"
fi
if [ "$ROLE" = agent ] && [ ! -f "$ETC/mqtt-password" ]; then
  install -m 0600 /dev/null "$ETC/mqtt-password"
fi

# Logs go to journald; cap the journal so months of logs never fill the SD card.
JOURNALD_DIR="$ROOT/etc/systemd/journald.conf.d"
if [ ! -f "$JOURNALD_DIR/chorus.conf" ]; then
  install -d -m 0755 "$JOURNALD_DIR"
  printf '[Journal]\nSystemMaxUse=200M\nMaxRetentionSec=1month\n' > "$JOURNALD_DIR/chorus.conf"
  chmod 0644 "$JOURNALD_DIR/chorus.conf"
  [ "$LIVE" -eq 0 ] || systemctl restart systemd-journald
fi

install -m 0644 "$SRC/systemd/chorus-agent.service" "$UNIT_DIR/chorus-agent.service"
install -m 0644 "$SRC/systemd/chorus-collector.service" "$UNIT_DIR/chorus-collector.service"

if [ "$LIVE" -eq 1 ]; then
  chown -R root:chorus "$ETC"
  chown chorus:chorus "$STATE"
  systemctl daemon-reload
  systemctl enable "chorus-$ROLE.service" >/dev/null
  systemctl restart "chorus-$ROLE.service"
  say "chorus-$ROLE is running: journalctl -u chorus-$ROLE -f   (status: systemctl status chorus-$ROLE)"
else
  say "staged under $ROOT (no apt, users or systemctl with --root)"
fi
