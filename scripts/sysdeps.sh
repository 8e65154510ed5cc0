#!/usr/bin/env bash
# Install the Debian packages a target needs, when missing. As root: apt-get. Otherwise: print the one
# command to run and stop, so nothing half-installs.
set -euo pipefail
target="${1:?usage: sysdeps.sh test|demo}"
PYTHON="${PYTHON:-python3}"

# Building PyAudio needs PortAudio's headers, a C compiler and Python's headers.
demo_pkgs=(portaudio19-dev gcc)
test_pkgs=("${demo_pkgs[@]}" mosquitto mosquitto-clients pulseaudio pulseaudio-utils libasound2-plugins socat postgresql chromium espeak-ng sox faketime poppler-utils prometheus systemd)

case "$target" in
  demo) wanted=("${demo_pkgs[@]}") ;;
  test) wanted=("${test_pkgs[@]}") ;;
  *) echo "sysdeps.sh: unknown target '$target' (use test or demo)" >&2; exit 2 ;;
esac

if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "sysdeps: $PYTHON is older than 3.11 (or missing); install Python 3.11+ and set PYTHON=..." >&2
  exit 1
fi
# Debian's own Python splits venv and headers into packages of their own.
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then wanted+=(python3-venv); fi
if [ ! -f "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
  wanted+=(python3-dev)
fi

missing=()
for pkg in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  echo "sysdeps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "sysdeps: missing Debian packages; run this, then try again:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
