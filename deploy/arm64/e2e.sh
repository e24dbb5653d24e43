#!/bin/bash
# The arm64 end-to-end: edgellm built and run on arm64 Debian under qemu-user, for each
# emulated core in cpus.txt (Cortex-A72 = Raspberry Pi 4, Cortex-A76 = Raspberry Pi 5).
#
#   deploy/arm64/e2e.sh rootfs   build (or reuse) the cached arm64 rootfs
#   deploy/arm64/e2e.sh smoke    toolchain check: numpy and cffi installed by pip inside, a
#                                small cffi module compiled by the arm64 gcc, and each emulated
#                                core reporting the CPU features it should
#   deploy/arm64/e2e.sh run      pip-install this checkout inside (the kernels compile with
#                                the arm64 gcc), then per core: `edgellm info --system` names
#                                the expected kernel variant, and greedy `edgellm run` with
#                                the default model prints exactly what it prints on this host
#   deploy/arm64/e2e.sh all      (default) rootfs, smoke, run
#
# Needs root (debootstrap, chroot, binfmt_misc), apt and PyPI, and time: the first rootfs
# build takes ~15 min on 2 cores and is cached in ~/.cache/edgellm/arm64-rootfs
# (EDGELLM_ARM64_CACHE moves it). Settings:
#   EDGELLM_HOST_EDGELLM   the host's edgellm command for the reference output
#                          (default: .venv/bin/edgellm of this checkout, else `edgellm`)
#   EDGELLM_E2E_PROMPT / EDGELLM_E2E_TOKENS   the greedy prompt and its length (12)
#   EDGELLM_EXPECT_VARIANT_<cpu with _ for ->   override a variant from cpus.txt
#   EDGELLM_ARM64_MIRROR   Debian mirror (default: the one this machine's apt uses)

# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

CPUS_FILE=${EDGELLM_ARM64_CPUS_FILE:-$HERE/cpus.txt}
# A prompt whose greedy answer never comes near a tie: each ISA variant sums in its own f32
# order, and Gemma 3 270M amplifies those last-bit differences into logit differences of
# ~0.1-0.5 (llama.cpp differs from itself that much with flash attention on vs off), so a
# prompt with near-ties compares rounding, not kernels (measured: "The three primary colors
# are" has a top-2 gap of 0.18 at " blue" vs " yellow", and the A76 took the other). Here the
# smallest gap over the 12 tokens is 1.8 on x86; a broken kernel fails at the first token.
PROMPT=${EDGELLM_E2E_PROMPT:-A, B, C, D, E, F,}
TOKENS=${EDGELLM_E2E_TOKENS:-12}
LOGS=$ARM64_CACHE/logs
# The core everything is built on: the baseline one, so a build that wrongly probed the
# build machine would show up as the wrong variant on the other core.
BUILD_CPU=cortex-a72

mkdir -p "$LOGS"

# Runs a step with its output in a log file (stdout in $STEP_STDOUT instead, when set);
# prints the log's tail only when it fails.
step() {
    local name=$1 started rc=0
    shift
    started=$(date +%s)
    log "$name ..."
    : >"$LOGS/$name.log"
    "$@" >"${STEP_STDOUT:-$LOGS/$name.log}" 2>>"$LOGS/$name.log" || rc=$?
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$LOGS/$name.log" >&2
        die "$name failed (exit $rc; full log $LOGS/$name.log)"
    fi
    log "$name ok ($(($(date +%s) - started)) s)"
}

# cpus.txt rows as "cpu variant features", comments and blank lines skipped.
cpu_rows() {
    awk '!/^[[:space:]]*(#|$)/ { print $1, $2, $3 }' "$CPUS_FILE"
}

expected_variant() {
    local cpu=$1 default=$2 var
    var=EDGELLM_EXPECT_VARIANT_${cpu//-/_}
    printf '%s\n' "${!var:-$default}"
}

# Copies a host directory into the rootfs, fresh each run (no build leftovers from the host).
copy_in() {
    local from=$1 to=$ROOTFS$2
    rm -rf --one-file-system "$to"
    mkdir -p "$to"
    tar -C "$from" --exclude=.git --exclude=.venv --exclude=build --exclude='*.so' \
        --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache -cf - . \
        | tar -C "$to" -xf -
}

# Venvs live on in the cached rootfs (creating one takes minutes under qemu); one whose
# python no longer runs is made again.
ensure_venv() {
    if ! in_rootfs "$1/bin/python" -c 'import sys' >/dev/null 2>&1; then
        step "venv${1//\//-}" in_rootfs python3 -m venv --clear "$1"
    fi
}

cmd_smoke() {
    ensure_rootfs
    enter_rootfs
    trap leave_rootfs EXIT
    copy_in "$HERE/smoke" /opt/edgellm-smoke/src
    export QEMU_CPU=$BUILD_CPU
    ensure_venv /opt/edgellm-smoke/venv
    step smoke-pip in_rootfs /opt/edgellm-smoke/venv/bin/pip install numpy cffi setuptools
    step smoke-build in_rootfs /opt/edgellm-smoke/venv/bin/python \
        /opt/edgellm-smoke/src/build_hwcaps.py /opt/edgellm-smoke/build
    local cpu variant features board_expect
    while read -r cpu variant features; do
        board_expect=()
        IFS=, read -r -a items <<<"$features"
        for item in "${items[@]}"; do
            board_expect+=(--expect "$item")
        done
        QEMU_CPU=$cpu
        export QEMU_CPU
        step "smoke-$cpu" in_rootfs /opt/edgellm-smoke/venv/bin/python \
            /opt/edgellm-smoke/src/check_smoke.py /opt/edgellm-smoke/build "${board_expect[@]}"
        log "$cpu: $(tail -n 1 "$LOGS/smoke-$cpu.log")"
    done < <(cpu_rows)
    leave_rootfs
    trap - EXIT
    log "smoke passed"
}

host_edgellm() {
    if [ -n "${EDGELLM_HOST_EDGELLM:-}" ]; then
        printf '%s\n' "$EDGELLM_HOST_EDGELLM"
    elif [ -x "$SRC/.venv/bin/edgellm" ]; then
        printf '%s\n' "$SRC/.venv/bin/edgellm"
    elif command -v edgellm >/dev/null; then
        command -v edgellm
    else
        die "no edgellm on this host for the reference output: make the venv (make test) or set EDGELLM_HOST_EDGELLM"
    fi
}

cmd_run() {
    local host reference failed=0
    host=$(host_edgellm)
    log "reference: $host run --temp 0 -n $TOKENS \"$PROMPT\" on $(uname -m)"
    reference=$("$host" run --temp 0 -n "$TOKENS" "$PROMPT")
    [ -n "$reference" ] || die "the host's greedy output is empty"

    ensure_rootfs
    enter_rootfs
    trap leave_rootfs EXIT
    copy_in "$SRC" /opt/edgellm-e2e/src
    export QEMU_CPU=$BUILD_CPU
    ensure_venv /opt/edgellm-e2e/venv
    # pip builds the wheel inside the rootfs: cffi drives the arm64 gcc over kernels/*.c.
    # A local directory is always rebuilt and reinstalled; dependencies stay from last time.
    step e2e-pip in_rootfs /opt/edgellm-e2e/venv/bin/pip install /opt/edgellm-e2e/src
    # The default model is assembled once into the rootfs's ~/.cache/edgellm and reused.

    local cpu variant features want got output
    while read -r cpu variant features; do
        want=$(expected_variant "$cpu" "$variant")
        QEMU_CPU=$cpu
        export QEMU_CPU
        step "info-$cpu" in_rootfs /opt/edgellm-e2e/venv/bin/edgellm info --system
        got=$(awk '$1 == "kernels:" { print $2; exit }' "$LOGS/info-$cpu.log")
        if [ "$got" = "$want" ]; then
            log "$cpu: kernels $got (expected)"
        else
            log "$cpu: kernels ${got:-<none printed>}, expected $want"
            failed=1
        fi
        STEP_STDOUT=$LOGS/run-$cpu.out step "run-$cpu" in_rootfs \
            /opt/edgellm-e2e/venv/bin/edgellm run --temp 0 -n "$TOKENS" "$PROMPT"
        output=$(cat "$LOGS/run-$cpu.out")
        if [ "$output" = "$reference" ]; then
            log "$cpu: greedy output equals the host's"
        else
            log "$cpu: greedy output differs from the host's"
            diff <(printf '%s\n' "$reference") <(printf '%s\n' "$output") >&2 || true
            failed=1
        fi
    done < <(cpu_rows)
    leave_rootfs
    trap - EXIT
    [ "$failed" = 0 ] || die "arm64 end-to-end failed"
    log "arm64 end-to-end passed"
}

need_root
case ${1:-all} in
    rootfs) ensure_rootfs ;;
    smoke) cmd_smoke ;;
    run) cmd_run ;;
    all) ensure_rootfs; cmd_smoke; cmd_run ;;
    *) die "usage: $0 [rootfs|smoke|run|all]" ;;
esac
