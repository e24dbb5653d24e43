# Shared by the arm64 end-to-end scripts (sourced, not run): where the cached rootfs lives,
# how it is built, and how commands run inside it through qemu-user-static and binfmt_misc.
# shellcheck shell=bash

ARM64_SUITE=${EDGELLM_ARM64_SUITE:-bookworm}
ARM64_CACHE=${EDGELLM_ARM64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgellm}
ROOTFS=$ARM64_CACHE/arm64-rootfs
# What the rootfs must hold: a compiler and headers so pip builds the cffi kernels inside it.
ARM64_PACKAGES=python3,python3-venv,python3-dev,gcc,libc6-dev,ca-certificates
# The stamp records what a finished rootfs was built from; a different key rebuilds it.
ROOTFS_STAMP=$ROOTFS/.edgellm-rootfs
ROOTFS_KEY="suite=$ARM64_SUITE packages=$ARM64_PACKAGES"

log() { printf '[arm64] %s\n' "$*" >&2; }
die() { printf '[arm64] error: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root: debootstrap, chroot and binfmt_misc need it"
}

# Installs debootstrap, qemu-user-static and binfmt-support if any is missing.
ensure_host_tools() {
    if command -v debootstrap >/dev/null && command -v qemu-aarch64-static >/dev/null \
        && command -v update-binfmts >/dev/null; then
        return
    fi
    log "installing debootstrap qemu-user-static binfmt-support"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        debootstrap qemu-user-static binfmt-support
}

# The kernel runs arm64 ELF files through qemu once binfmt_misc has a qemu-aarch64 entry.
# Containers often start without binfmt_misc mounted, and without binfmt-support's service
# having registered anything.
ensure_binfmt() {
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        log "mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || die "binfmt_misc has qemu-aarch64 but it is disabled"
}

# The Debian mirror this machine's apt uses for $ARM64_SUITE (deb822 .sources or one-line
# .list files); only registries configured here are reachable, so the rootfs uses the same.
host_mirror() {
    local f uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk -v suite="$ARM64_SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/)  types = $i
                    if ($i ~ /^URIs:/)   uris = $i
                    if ($i ~ /^Suites:/) suites = $i
                }
                if (types ~ /[ \t]deb([ \t]|$)/ && (" " suites " ") ~ ("[ \t]" suite "[ \t]")) {
                    split(uris, u, /[ \t]+/); print u[2]; exit
                }
            }' "$f")
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            uri=$(awk -v suite="$ARM64_SUITE" '
                $1 == "deb" {
                    i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == suite) { print $i; exit }
                }' "$f")
            [ -n "$uri" ] && break
        done
    fi
    printf '%s\n' "${EDGELLM_ARM64_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

# Mount points under a directory, deepest first.
mounts_under() {
    findmnt -rn -o TARGET | awk -v d="$1" 'index($0, d "/") == 1' | sort -r
}

unmount_under() {
    local m
    for m in $(mounts_under "$1"); do
        umount -l "$m" || true
    done
}

# Deletes a rootfs tree, never following a bind mount back into the host's /dev or /proc.
remove_tree() {
    [ -e "$1" ] || return 0
    unmount_under "$1"
    [ -z "$(mounts_under "$1")" ] || die "refusing to delete $1: still has mounts under it"
    rm -rf --one-file-system "$1"
}

rootfs_ready() {
    [ -f "$ROOTFS_STAMP" ] && [ "$(cat "$ROOTFS_STAMP")" = "$ROOTFS_KEY" ]
}

# Builds the rootfs into a scratch directory and moves it into place only when complete,
# so an interrupted build is never mistaken for a cached one.
build_rootfs() {
    local mirror work
    mirror=$(host_mirror)
    work=$ROOTFS.partial
    remove_tree "$work"
    mkdir -p "$ARM64_CACHE"
    log "debootstrap $ARM64_SUITE arm64 from $mirror into $work (first stage)"
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$ARM64_PACKAGES" \
        "$ARM64_SUITE" "$work" "$mirror"
    # With binfmt's F flag the kernel already holds the interpreter open; the copy keeps the
    # rootfs usable where the entry was registered without it.
    cp /usr/bin/qemu-aarch64-static "$work/usr/bin/"
    log "second stage (arm64 code under qemu; this is the slow part)"
    chroot "$work" /debootstrap/debootstrap --second-stage
    printf 'deb %s %s main\n' "$mirror" "$ARM64_SUITE" >"$work/etc/apt/sources.list"
    printf '%s\n' "$ROOTFS_KEY" >"$work/.edgellm-rootfs"
    remove_tree "$ROOTFS"
    mv "$work" "$ROOTFS"
    log "rootfs ready at $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))"
}

ensure_rootfs() {
    need_root
    ensure_host_tools
    ensure_binfmt
    if rootfs_ready; then
        log "using cached rootfs $ROOTFS"
    else
        build_rootfs
    fi
}

# Mounts /proc, /dev and /sys into the rootfs (once) and the host's resolver and CA roots
# (an egress proxy's CA among them) so pip inside can reach the package index; `leave_rootfs`
# undoes it and is set as the EXIT trap by callers.
enter_rootfs() {
    mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
    mountpoint -q "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
    mountpoint -q "$ROOTFS/sys" || mount --bind /sys "$ROOTFS/sys"
    cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    cp -L /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/host-ca-bundle.crt"
}

leave_rootfs() {
    unmount_under "$ROOTFS"
}

# Runs a command inside the rootfs as arm64 code; QEMU_CPU (if set) picks the emulated core
# and is inherited by every process the command starts.
in_rootfs() {
    chroot "$ROOTFS" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
        ${QEMU_CPU:+QEMU_CPU=$QEMU_CPU} \
        "$@"
}
