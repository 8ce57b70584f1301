# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run).

# apt_ensure PKG...: install the Debian packages that are missing (sudo only when not root).
apt_ensure() {
  local missing="" p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -n "${missing// /}" ] || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
}

# venv_install SPEC...: create .venv if needed and pip-install into it.
venv_install() {
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$@"
}
