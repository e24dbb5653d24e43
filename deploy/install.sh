#!/bin/bash
# Installs edgellm as a systemd service from this checkout (run as root on the board):
#
#   sudo deploy/install.sh                 install or upgrade, enable and (re)start the unit
#   sudo deploy/install.sh --uninstall     stop and remove the unit and the venv; keep
#                                          /etc/edgellm and /var/lib/edgellm
#   sudo deploy/install.sh --uninstall --purge    also remove those and the edgellm user
#
# What it does, each step safe to repeat (a second run with nothing changed rewrites the
# same files and skips the package build):
#   1. a venv at PREFIX/venv (default /opt/edgellm/venv) with this checkout installed by pip,
#      which compiles the C kernels for this board;
#   2. the default model assembled into STATE_DIR/models (default /var/lib/edgellm), where the
#      unit's EDGELLM_CACHE points;
#   3. CONFIG_DIR/config.toml from deploy/config.example.toml unless one exists (never
#      overwritten), root:edgellm 0640, checked with `edgellm serve --check`;
#   4. the unit in UNIT_DIR, and UNIT_DIR/edgellm.service.d/memory.conf with MemoryHigh= and
#      MemoryMax= from the memory plan for this board and config (deploy/memory_limits.py);
#   5. the `edgellm` system user (in dialout), then systemctl daemon-reload, enable, restart.
#
# Every location is an option so tests can install into a scratch directory; systemctl is
# called only when systemd is running (or never, with --no-systemctl).

set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$SRC/deploy
DEFAULT_PREFIX=/opt/edgellm

PREFIX=$DEFAULT_PREFIX
CONFIG_DIR=/etc/edgellm
STATE_DIR=/var/lib/edgellm
UNIT_DIR=/etc/systemd/system
SERVICE_USER=edgellm
PYTHON=python3
USE_SYSTEMCTL=auto
WITH_MODEL=1
SYSTEM_SITE=0
DEVICE=""
UNINSTALL=0
PURGE=0
REINSTALL=0

usage() {
    cat <<EOF
usage: $0 [options]            install or upgrade
       $0 --uninstall [--purge] [options]

  --prefix DIR         venv and shared files (default $DEFAULT_PREFIX)
  --config-dir DIR     config directory (default /etc/edgellm)
  --state-dir DIR      models (default /var/lib/edgellm; the unit's StateDirectory)
  --unit-dir DIR       systemd unit directory (default /etc/systemd/system)
  --user NAME          service user to create and own the state (default edgellm)
  --no-user            create no user and change no ownership
  --python PATH        interpreter for the venv (default python3, >= 3.10)
  --system-site-packages   let the venv see system packages (numpy, cffi) instead of
                       installing its own copies
  --device NAME[:RAM]  plan the memory limits for this board instead of the running one
  --no-model           do not assemble the default model
  --no-systemctl       never call systemctl (default: only when systemd is running)
  --reinstall          rebuild the package even if the checkout did not change
  --uninstall          remove the unit and the venv
  --purge              with --uninstall: also the config, the state and the user
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) PREFIX=$2; shift ;;
        --config-dir) CONFIG_DIR=$2; shift ;;
        --state-dir) STATE_DIR=$2; shift ;;
        --unit-dir) UNIT_DIR=$2; shift ;;
        --user) SERVICE_USER=$2; shift ;;
        --no-user) SERVICE_USER="" ;;
        --python) PYTHON=$2; shift ;;
        --system-site-packages) SYSTEM_SITE=1 ;;
        --device) DEVICE=$2; shift ;;
        --no-model) WITH_MODEL=0 ;;
        --no-systemctl) USE_SYSTEMCTL=no ;;
        --reinstall) REINSTALL=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "$0: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

for dir in "$PREFIX" "$CONFIG_DIR" "$STATE_DIR" "$UNIT_DIR"; do
    # These are deleted by --uninstall --purge: never a relative path or the root.
    case $dir in
        /?*) ;;
        *) echo "$0: $dir: locations must be absolute paths below /" >&2; exit 2 ;;
    esac
done

VENV=$PREFIX/venv
UNIT=$UNIT_DIR/edgellm.service
DROPIN_DIR=$UNIT_DIR/edgellm.service.d
CONFIG=$CONFIG_DIR/config.toml

say() { printf 'edgellm install: %s\n' "$*"; }
die() { printf 'edgellm install: error: %s\n' "$*" >&2; exit 1; }

# systemctl only where systemd is PID 1 (sd_booted(3)'s test): never in a container build or
# a chroot, where it would fail or act on the wrong system.
if [ "$USE_SYSTEMCTL" = auto ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        USE_SYSTEMCTL=yes
    else
        USE_SYSTEMCTL=no
    fi
fi

systemctl_do() {
    if [ "$USE_SYSTEMCTL" = yes ]; then
        systemctl "$@"
    fi
}

uninstall() {
    if [ "$USE_SYSTEMCTL" = yes ] && [ -e "$UNIT" ]; then
        systemctl disable --now edgellm.service || true
    fi
    rm -f "$UNIT" "$DROPIN_DIR/memory.conf"
    rmdir "$DROPIN_DIR" 2>/dev/null || true
    systemctl_do daemon-reload
    rm -rf "$VENV" "$PREFIX/share"
    rmdir "$PREFIX" 2>/dev/null || true
    if [ "$PURGE" = 1 ]; then
        rm -rf "$CONFIG_DIR" "$STATE_DIR"
        if [ -n "$SERVICE_USER" ] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
            userdel "$SERVICE_USER" || true
        fi
        say "removed the service, the venv, $CONFIG_DIR, $STATE_DIR and user $SERVICE_USER"
    else
        say "removed the service and the venv; kept $CONFIG_DIR and $STATE_DIR (--purge removes them)"
    fi
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
    exit 0
fi

# -- 1. the venv and the package ---------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is older than Python 3.10"
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    # Missing, or broken by a Python upgrade underneath it: (re)create.
    venv_args=()
    [ "$SYSTEM_SITE" = 1 ] && venv_args+=(--system-site-packages)
    say "creating $VENV"
    "$PYTHON" -m venv --clear "${venv_args[@]}" "$VENV"
fi
# The files pip packages: sources of the subpackages and the build configuration.
package_files() {
    (cd "$SRC" && find pyproject.toml setup.py errors kernels runtime devices services cli -type f \
        \( -name '*.py' -o -name '*.c' -o -name '*.h' -o -name '*.jinja' -o -name '*.toml' \) \
        -not -path '*/build/*' -print0 | LC_ALL=C sort -z)
}
# The package is rebuilt only when the checkout changed since the last install (compiling
# the kernels takes minutes on a Pi Zero): the stamp is a hash of every file pip packages.
source_hash=$(package_files | (cd "$SRC" && xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)
stamp=$PREFIX/share/source.sha256
if [ "$REINSTALL" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$source_hash" ] \
    && "$VENV/bin/edgellm" --help >/dev/null 2>&1; then
    say "edgellm in $VENV is already this checkout's (--reinstall forces a rebuild)"
else
    say "installing edgellm from $SRC (compiles the kernels for this CPU)"
    rm -f "$stamp"
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds,
    # which must not land root-owned in the user's checkout.
    build_dir=$(mktemp -d)
    trap 'rm -rf "$build_dir"' EXIT
    package_files | (cd "$SRC" && xargs -0 cp --parents -t "$build_dir")
    if [ -f "$SRC/README.md" ]; then
        cp "$SRC/README.md" "$build_dir/"
    fi
    # pip rebuilds and reinstalls a local directory every time; dependencies already in
    # the venv are kept.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$build_dir"
    rm -rf "$build_dir"
    trap - EXIT
    "$VENV/bin/edgellm" --help >/dev/null || die "the installed edgellm command does not run"
    mkdir -p "$PREFIX/share"
    printf '%s\n' "$source_hash" >"$stamp"
fi

mkdir -p "$PREFIX/share"
install -m 0644 "$DEPLOY/config.example.toml" "$PREFIX/share/config.example.toml"
if [ -f "$SRC/README.md" ]; then
    install -m 0644 "$SRC/README.md" "$PREFIX/share/README.md"
fi

# -- 2. the service user and the default model ---------------------------------------------------
if [ -n "$SERVICE_USER" ] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    say "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "edgellm service" "$SERVICE_USER"
fi
if [ -n "$SERVICE_USER" ] && getent group dialout >/dev/null; then
    # The unit's SupplementaryGroups=dialout covers the service; this is for `sudo -u edgellm`.
    usermod -a -G dialout "$SERVICE_USER"
fi

mkdir -p "$STATE_DIR"
chmod 0750 "$STATE_DIR"
if [ "$WITH_MODEL" = 1 ]; then
    say "assembling the default model into $STATE_DIR/models"
    # The same cache the unit uses (Environment=EDGELLM_CACHE): the service finds it ready.
    # Assembly is skipped when the stamped copy is already there.
    EDGELLM_CACHE=$STATE_DIR "$VENV/bin/python" -c '
from edgellm.runtime.default_model import default_model_path
print(default_model_path(progress=False))'
fi
if [ -n "$SERVICE_USER" ]; then
    chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
fi

# -- 3. the config -----------------------------------------------------------------------------
mkdir -p "$CONFIG_DIR"
if [ ! -e "$CONFIG" ]; then
    say "writing $CONFIG from the example (edit it, then: systemctl reload edgellm)"
    install -m 0640 "$DEPLOY/config.example.toml" "$CONFIG"
else
    say "keeping the existing $CONFIG"
fi
if [ -n "$SERVICE_USER" ]; then
    chgrp "$SERVICE_USER" "$CONFIG"
fi
config_ok=1
"$VENV/bin/edgellm" serve --config "$CONFIG" --check || config_ok=0

# -- 4. the unit and its memory limits -----------------------------------------------------------
mkdir -p "$UNIT_DIR" "$DROPIN_DIR"
unit_tmp=$(mktemp "$UNIT_DIR/.edgellm.service.XXXXXX")
# The unit names /opt/edgellm; another prefix is substituted in.
sed "s#$DEFAULT_PREFIX/#$PREFIX/#g" "$DEPLOY/edgellm.service" >"$unit_tmp"
chmod 0644 "$unit_tmp"
mv "$unit_tmp" "$UNIT"

memory_tmp=$(mktemp "$DROPIN_DIR/.memory.conf.XXXXXX")
plan_args=(--config "$CONFIG")
[ -n "$DEVICE" ] && plan_args+=(--device "$DEVICE")
if [ "$config_ok" = 1 ] && EDGELLM_CACHE=$STATE_DIR "$VENV/bin/python" \
    "$DEPLOY/memory_limits.py" "${plan_args[@]}" >"$memory_tmp"; then
    chmod 0644 "$memory_tmp"
    mv "$memory_tmp" "$DROPIN_DIR/memory.conf"
    say "memory limits: $(grep -E '^Memory' "$DROPIN_DIR/memory.conf" | tr '\n' ' ')"
else
    rm -f "$memory_tmp"
    say "warning: no memory plan; the unit's default MemoryHigh/MemoryMax apply"
fi
if [ -r /sys/fs/cgroup/cgroup.controllers ] \
    && ! grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    # Raspberry Pi OS boots without the memory controller: the limits are then not enforced.
    say "warning: the memory cgroup controller is off; add cgroup_enable=memory to" \
        "/boot/firmware/cmdline.txt and reboot for MemoryHigh/MemoryMax to apply"
fi

# -- 5. systemd ----------------------------------------------------------------------------------
if [ "$USE_SYSTEMCTL" = yes ]; then
    systemctl daemon-reload
    systemctl enable edgellm.service
    if [ "$config_ok" = 1 ]; then
        systemctl restart edgellm.service
        say "started: systemctl status edgellm; journalctl -u edgellm -f"
    else
        say "not started: fix $CONFIG, then systemctl start edgellm"
    fi
else
    say "systemd is not running here: enable later with systemctl enable --now edgellm"
fi
[ "$config_ok" = 1 ] || exit 1
say "done"
