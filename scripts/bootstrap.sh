#!/usr/bin/env bash
# Creates the virtualenv and installs what Ficus needs: Debian packages first (only the
# missing ones), then the Python package in editable mode with its dev extras.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."

# Debian packages: Python venv support, ODBC drivers, OpenSSH server for the SFTP tests, HAProxy
# for the high-availability tests (they start their own haproxy on free ports; Debian's own
# service, if systemd starts it, serves its empty default config), systemd for `systemd-analyze
# verify` of deploy/systemd/ficus.service (tests/test_deploy.py; nothing is started by it).
DEB_PKGS=(python3 python3-venv python3-dev gcc unixodbc unixodbc-dev odbc-postgresql odbc-mariadb openssh-server openssh-client haproxy systemd)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${DEB_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
fi
# pyenv or another Python with venv counts as "python3-venv present".
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [[ $p == python3* ]] || tmp+=("$p"); done; missing=("${tmp[@]+"${tmp[@]}"}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's chromium for the console's browser tests (pip playwright, a dev extra, drives it at
# /usr/bin/chromium and downloads no browser). Apart from the packages above: a system without
# it (another distribution) still gets everything else, and those tests skip with a message.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing Debian package: chromium"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium; } \
    || echo "bootstrap: could not install chromium; the console's browser tests will skip"
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
# The official AsyncAPI 3.0.0 JSON Schema (npm package @asyncapi/specs) for the test that
# validates Ficus's AsyncAPI document; no PyPI package ships it.
SPECS="$VENV/asyncapi-specs"
if [ ! -f "$SPECS/package/schemas/3.0.0-without-\$id.json" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm || true
  fi
  if command -v npm >/dev/null 2>&1; then
    mkdir -p "$SPECS" && (cd "$SPECS" && npm pack --silent @asyncapi/specs@6.11.1 >/dev/null && tar xzf asyncapi-specs-*.tgz) \
      || echo "bootstrap: could not fetch @asyncapi/specs; the AsyncAPI validation test will skip"
  fi
fi
echo "bootstrap: $VENV ready ($("$VENV/bin/python" --version), nats-server $("$VENV/bin/nats-server" --version 2>/dev/null | tr -d '\n'))"
