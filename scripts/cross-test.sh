#!/usr/bin/env bash
# Proves the C core builds and passes its own C tests on ARM: cross-compiles
# src/native and tests/native with Debian's cross compilers, runs the tests
# and a small hashing benchmark (scripts/cross/bench_hash.c) under qemu-user,
# and prints a summary per architecture.
#
#   scripts/cross-test.sh [aarch64|armv7|all]     # default: all
#
# As root it installs what it needs (cross gcc, qemu-user-static, file, make).
# The target's libsodium and zlib are not installed system-wide: their -dev
# .debs are downloaded with a private apt state and unpacked into
# build/cross/<arch>/sysroot, and everything is linked statically, so qemu needs
# no target root filesystem. A second run reuses all of it and only rebuilds
# what changed. Bench figures are emulated: a sanity check, not a measurement.
#
# Environment: NHLINK_CROSS_BENCH_MIB (default 64) sets the benchmark size,
# NHLINK_CROSS_TEST_TIMEOUT (default 600) the seconds each test binary may run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/build/cross
BENCH_MIB=${NHLINK_CROSS_BENCH_MIB:-64}
TEST_TIMEOUT=${NHLINK_CROSS_TEST_TIMEOUT:-600}
CORE_CFLAGS=(-std=gnu11 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -pthread
             -D_FILE_OFFSET_BITS=64 -D_GNU_SOURCE)

usage() { echo "usage: $0 [aarch64|armv7|all]" >&2; exit 2; }

case "${1:-all}" in
    aarch64|armv7) ARCHES=("$1") ;;
    all) ARCHES=(aarch64 armv7) ;;
    *) usage ;;
esac

# Per-architecture names: GNU triplet, Debian architecture, qemu binary.
triplet_of() { case $1 in aarch64) echo aarch64-linux-gnu ;; armv7) echo arm-linux-gnueabihf ;; esac; }
debarch_of() { case $1 in aarch64) echo arm64 ;; armv7) echo armhf ;; esac; }
qemu_of() { case $1 in aarch64) echo qemu-aarch64 ;; armv7) echo qemu-arm ;; esac; }

log() { printf '== %s\n' "$*"; }
die() { printf 'cross-test: %s\n' "$*" >&2; exit 1; }

install_host_tools() {
    local pkgs=(make file qemu-user-static) missing=() arch pkg
    for arch in "${ARCHES[@]}"; do
        pkgs+=("gcc-$(triplet_of "$arch")" "libc6-dev-$(debarch_of "$arch")-cross")
    done
    for pkg in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "please install: ${missing[*]}"
    fi
    log "installing ${missing[*]}"
    # A partial index failure (a mirror mid-sync) must not stop us; the install says what is missing.
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# apt-get with a private state: indexes for the ARM architectures without
# `dpkg --add-architecture`, so the system's apt setup is left as it was.
private_apt() {
    local dir=$WORK/apt
    local opts=(-q -o Debug::NoLocking=1 -o APT::Sandbox::User=root
                -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache"
                -o Dir::State::status="$dir/status")
    local debarch
    for debarch in arm64 armhf; do opts+=(-o "APT::Architectures::=$debarch"); done
    if [[ -f $dir/sources.list ]]; then
        opts+=(-o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts="$dir/none")
    fi
    apt-get "${opts[@]}" "$@"
}

prepare_private_apt() {
    local dir=$WORK/apt
    [[ -f $dir/updated ]] && return 0
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/none"
    : > "$dir/status"
    # Ubuntu keeps ARM packages on a separate mirror (ports); Debian's mirrors carry every architecture.
    # shellcheck disable=SC1091
    if [[ $(. /etc/os-release && echo "$ID") == ubuntu ]]; then
        local codename
        codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
        printf 'deb [arch=arm64,armhf] http://ports.ubuntu.com/ubuntu-ports %s main universe\n' \
            "$codename" "$codename-updates" "$codename-security" > "$dir/sources.list"
    fi
    log "fetching ARM package indexes (private apt state in ${dir#"$ROOT"/})"
    private_apt update >"$dir/update.log" 2>&1 || echo "cross-test: some indexes failed (see $dir/update.log); going on"
    touch "$dir/updated"
}

# Unpacks libsodium-dev and zlib1g-dev for the target into build/cross/<arch>/sysroot.
prepare_sysroot() {
    local arch=$1 debarch triplet sysroot
    debarch=$(debarch_of "$arch")
    triplet=$(triplet_of "$arch")
    sysroot=$WORK/$arch/sysroot
    [[ -f $sysroot/.complete ]] && return 0
    prepare_private_apt
    local debs=$WORK/$arch/debs
    rm -rf "$debs" "$sysroot"
    mkdir -p "$debs" "$sysroot"
    log "$arch: downloading libsodium-dev:$debarch zlib1g-dev:$debarch"
    (cd "$debs" && private_apt download "libsodium-dev:$debarch" "zlib1g-dev:$debarch" >/dev/null) \
        || die "could not download the $debarch libraries (see $WORK/apt/update.log)"
    local deb
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$sysroot"; done
    [[ -f $sysroot/usr/lib/$triplet/libsodium.a && -f $sysroot/usr/lib/$triplet/libz.a ]] \
        || die "$arch: static libsodium/zlib missing from the unpacked packages"
    (cd "$debs" && ls) > "$sysroot/.complete"
}

# Compiles every src/native/nh_*.c on its own, so the core is proven to build
# even before tests exist. Prints the number of sources.
# True when $1 is missing or older than any of the other arguments.
stale() {
    local target=$1 dep; shift
    [[ -e $target ]] || return 0
    for dep; do [[ $dep -nt $target ]] && return 0; done
    return 1
}

build_core() {
    local arch=$1 cc=$2 out=$WORK/$1/core src obj headers=(src/native/*.h)
    mkdir -p "$out"
    local count=0
    for src in src/native/nh_*.c; do
        obj=$out/$(basename "${src%.c}").o
        if stale "$obj" "$src" "${headers[@]}"; then
            "$cc" "${CORE_CFLAGS[@]}" -Isrc/native -c "$src" -o "$obj" >&2 || return 1
        fi
        count=$((count + 1))
    done
    echo "$count"
}

build_bench() {
    local cc=$1 out=$2; shift 2
    if stale "$out" scripts/cross/bench_hash.c; then
        mkdir -p "$(dirname "$out")"
        "$cc" -std=gnu11 -O2 -Wall -Wextra -Werror "$@" scripts/cross/bench_hash.c -lsodium -lz -o "$out" \
            || return 1
    fi
}

rate_of() { sed -n "s/^$1: \(.*\) MB\/s$/\1/p" "$2"; }

# The host's own run of the benchmark: reference rates and digests.
HOST_BENCH_LOG=
host_bench() {
    local bin=$WORK/host/bench_hash
    [[ -n $HOST_BENCH_LOG ]] && return 0
    if ! echo '#include <sodium.h>' | cc -E -x c - >/dev/null 2>&1; then
        echo "cross-test: no host libsodium headers; skipping the native reference run" >&2
        return 0
    fi
    build_bench cc "$bin" || return 0
    HOST_BENCH_LOG=$WORK/host/bench.log
    "$bin" "$BENCH_MIB" > "$HOST_BENCH_LOG"
}

declare -A SUMMARY
FAILED=()

run_arch() {
    local arch=$1 triplet qemu sysroot cc dir status=ok
    triplet=$(triplet_of "$arch")
    qemu=$(command -v "$(qemu_of "$arch")-static" || command -v "$(qemu_of "$arch")") \
        || die "$(qemu_of "$arch") not found"
    cc=$triplet-gcc
    sysroot=$WORK/$arch/sysroot
    dir=$WORK/$arch
    prepare_sysroot "$arch"
    # Each test binary gets a time limit, so a hang under emulation fails instead of stalling.
    local run="timeout $TEST_TIMEOUT $qemu -L /usr/$triplet"

    log "$arch: building the C core with $cc"
    local ncore
    ncore=$(build_core "$arch" "$cc") || { FAILED+=("$arch: core build"); status=fail; ncore="FAILED"; }

    log "$arch: C tests (make -C tests/native check CC=$cc BUILD=build/$arch)"
    local mk=(make -s -C tests/native CC="$cc" BUILD="build/$arch" RUN="$run")
    local tests_line binary=
    # CFLAGS/LDFLAGS go through the environment so the Makefile's own flags are appended, not replaced.
    export CFLAGS="-O2 -g -isystem $sysroot/usr/include"
    export LDFLAGS="-static -L$sysroot/usr/lib/$triplet"
    if ! ls tests/native/test_*.c >/dev/null 2>&1; then
        tests_line="none yet (no tests/native/test_*.c)"
    elif ! "${mk[@]}" -j"$(nproc)" all > "$dir/build.log" 2>&1; then
        tail -n 40 "$dir/build.log"
        tests_line="BUILD FAILED (log: ${dir#"$ROOT"/}/build.log)"
        FAILED+=("$arch: C test build")
        status=fail
    else
        local rc=0
        "${mk[@]}" check 2>&1 | tee "$dir/check.log" || rc=$?
        tests_line=$(awk '/: [0-9]+ passed, [0-9]+ failed$/ { p += $(NF-3); f += $(NF-1); n++ }
                          END { printf "%d passed, %d failed (%d test binaries)", p, f, n }' "$dir/check.log")
        if ((rc)); then
            tests_line="$tests_line; make check FAILED (stops at the first failing binary)"
            FAILED+=("$arch: C tests")
            status=fail
        fi
        local built=(tests/native/build/"$arch"/test_*)
        [[ -e ${built[0]} ]] && binary=$ROOT/${built[0]}
    fi
    unset CFLAGS LDFLAGS

    log "$arch: benchmark under $(basename "$qemu") ($BENCH_MIB MiB)"
    local bench_bin=$dir/bench_hash bench_line
    [[ -n $binary ]] || binary=$bench_bin
    if ! build_bench "$cc" "$bench_bin" -isystem "$sysroot/usr/include" -static -L"$sysroot/usr/lib/$triplet"; then
        bench_line="BUILD FAILED"
        FAILED+=("$arch: bench build")
        status=fail
    elif $run "$bench_bin" "$BENCH_MIB" > "$dir/bench.log"; then
        bench_line="blake2b-256 $(rate_of blake2b-256 "$dir/bench.log") MB/s, crc32 $(rate_of crc32 "$dir/bench.log") MB/s, both $(rate_of 'blake2b-256+crc32' "$dir/bench.log") MB/s (emulated)"
        host_bench
        if [[ -n $HOST_BENCH_LOG ]]; then
            if diff <(grep -E 'digest|value' "$HOST_BENCH_LOG") <(grep -E 'digest|value' "$dir/bench.log") >/dev/null; then
                bench_line="$bench_line; digests equal the host's"
            else
                bench_line="$bench_line; DIGESTS DIFFER from the host's"
                FAILED+=("$arch: bench digests")
                status=fail
            fi
        fi
    else
        bench_line="FAILED"
        FAILED+=("$arch: bench")
        status=fail
    fi

    SUMMARY[$arch]=$(
        printf 'compiler: %s\n' "$("$cc" --version | head -1)"
        printf 'core:     %s src/native/nh_*.c compiled with -Werror\n' "$ncore"
        printf 'C tests:  %s\n' "$tests_line"
        printf 'binary:   %s\n' "${binary#"$ROOT"/}: $(file -b "$binary" | sed 's/, BuildID[^,]*//')"
        printf 'bench:    %s\n' "$bench_line"
        printf 'result:   %s' "$status"
    )
}

install_host_tools
for arch in "${ARCHES[@]}"; do
    run_arch "$arch"
done

echo
for arch in "${ARCHES[@]}"; do
    echo "== $arch summary"
    echo "${SUMMARY[$arch]}"
done
if [[ -n $HOST_BENCH_LOG ]]; then
    echo "== host reference ($(uname -m), native): blake2b-256 $(rate_of blake2b-256 "$HOST_BENCH_LOG") MB/s, crc32 $(rate_of crc32 "$HOST_BENCH_LOG") MB/s"
fi
if ((${#FAILED[@]})); then
    printf 'cross-test: FAILED: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
echo "cross-test: ok (${ARCHES[*]})"
