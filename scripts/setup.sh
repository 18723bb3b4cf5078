#!/usr/bin/env bash
# Installs what spg-media needs on a fresh Debian machine: the Debian packages of its real test peers
# and prompt synthesis, then a venv in .venv with the project and its dev tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(espeak-ng libespeak-ng1 libsrtp2-1 libspandsp2 sip-tester kamailio kamailio-tls-modules rtpengine-daemon baresip sox tshark openssl prometheus chromium)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,fast]" 2>&1 \
    | grep -v -e "^WARNING: Location" -e "is ignored" || true
# The fuzzing harness's engine (fuzz/README.md); a platform without an atheris wheel still runs
# the short fuzz replay of the unit tests, only not the atheris check.
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[fuzz]" >/dev/null 2>&1 \
    || echo "setup: atheris not installed (no wheel for this platform?): fuzz/run.py needs it"
echo "setup: ready (.venv/bin/spg-media)"
