#!/usr/bin/env bash
# Installs spg-media as a systemd service on Debian 12, from this checkout (README, "Deploying"):
#   - the Debian packages a node needs at run time: espeak-ng (prompts), python3-venv;
#   - a system user and group spg-media (no login shell, no home);
#   - a venv in /opt/spg-media with spg-media and uvloop (the [fast] extra), built from this
#     checkout, or from the wheel given as argument;
#   - /etc/spg-media/spg.toml written by `spg-media init` (fresh secrets, root:spg-media 0640)
#     with the Kamailio files in /etc/spg-media/kamailio/, unless spg.toml exists already;
#   - deploy/systemd/spg-media.service and spg-media@.service in /etc/systemd/system,
#     spg-media.service enabled but not started: edit the config first.
# Run as root. Run it again to upgrade: the venv is reinstalled, the config kept, the units replaced
# (then `systemctl restart spg-media`: it drains the calls in progress first).
#
# usage: deploy/install.sh [--no-system] [WHEEL]
#   SPG_PREFIX (/opt/spg-media), SPG_CONFIG_DIR (/etc/spg-media), SPG_UNIT_DIR
#   (/etc/systemd/system) and PYTHON (python3) choose where and with what; the units are rewritten
#   to name them. --no-system leaves the machine alone (no packages, no user, no ownership, no
#   systemctl): a trial into other directories, as the tests do.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${SPG_PREFIX:-/opt/spg-media}"
CONFIG_DIR="${SPG_CONFIG_DIR:-/etc/spg-media}"
UNIT_DIR="${SPG_UNIT_DIR:-/etc/systemd/system}"
PYTHON="${PYTHON:-python3}"
SERVICE_USER=spg-media

system=1
source_spec="$REPO"
for arg in "$@"; do
    case "$arg" in
        --no-system) system=0 ;;
        -h | --help) sed -n '2,18p' "$0" | cut -c3-; exit 0 ;;
        -*) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
        *) source_spec="$(realpath "$arg")" ;;
    esac
done
say() { echo "install.sh: $*"; }

if ((system)); then
    [[ $(id -u) -eq 0 ]] || { echo "install.sh: run as root (or --no-system)" >&2; exit 2; }
    missing=()
    for pkg in espeak-ng python3-venv; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing Debian packages: ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        say "creating system user $SERVICE_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "install.sh: $PYTHON is older than Python 3.11" >&2; exit 2; }
if [[ ! -x "$PREFIX/bin/python" ]]; then
    say "creating the venv $PREFIX"
    "$PYTHON" -m venv "$PREFIX"
fi
say "installing spg-media from $source_spec into $PREFIX"
pip_log="$(mktemp)"
scratch="$(mktemp -d)"
trap 'rm -rf "$pip_log" "$scratch"' EXIT
if [[ -d "$source_spec" ]]; then
    # pip builds a source tree in place (setuptools' build/): build a copy instead, so the checkout
    # stays as it was (a root-owned build/ in someone's checkout, or two builds racing in one).
    tar -C "$source_spec" --exclude=./.git --exclude=./.venv --exclude=./build \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache \
        -cf - . | tar -C "$scratch" -xf -
    source_spec="$scratch"
fi
if ! "$PREFIX/bin/python" -m pip install -q --disable-pip-version-check --upgrade \
    "${source_spec}[fast]" >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    echo "install.sh: pip could not install spg-media (above)" >&2
    exit 1
fi
"$PREFIX/bin/spg-media" --help >/dev/null

mkdir -p "$CONFIG_DIR"
if [[ -e "$CONFIG_DIR/spg.toml" ]]; then
    say "keeping $CONFIG_DIR/spg.toml"
else
    "$PREFIX/bin/spg-media" init "$CONFIG_DIR" | sed 's/^/install.sh: /'
    if ((system)); then
        chown "root:$SERVICE_USER" "$CONFIG_DIR/spg.toml"
        chmod 0640 "$CONFIG_DIR/spg.toml"
    fi
fi

mkdir -p "$UNIT_DIR"
for unit in spg-media.service spg-media@.service; do
    sed -e "s#/opt/spg-media/#$PREFIX/#g" -e "s#/etc/spg-media/#$CONFIG_DIR/#g" \
        "$REPO/deploy/systemd/$unit" >"$UNIT_DIR/$unit.tmp"
    chmod 0644 "$UNIT_DIR/$unit.tmp"
    mv "$UNIT_DIR/$unit.tmp" "$UNIT_DIR/$unit"
done
say "units in $UNIT_DIR"

if ((system)); then
    systemctl daemon-reload
    systemctl enable spg-media.service
    say "next: edit $CONFIG_DIR/spg.toml (sip.listen, sip.public_host, sip.trusted_sources,"
    say "  rtp.address, gateway.*), check it with"
    say "  $PREFIX/bin/spg-media check-config -c $CONFIG_DIR/spg.toml"
    say "then: systemctl start spg-media && journalctl -u spg-media -f"
fi
