#!/usr/bin/env bash
# Sets up everything nhlink needs on a fresh Debian machine of this kind:
# system packages (when run as root and missing) and a virtualenv in .venv
# with nhlink installed (native core built) plus the test/dev tools.
#
#   scripts/bootstrap.sh            # idempotent; fast when already done
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(
    build-essential     # gcc for the native core
    python3-dev         # only used when the system Python is the one in use
    zlib1g-dev          # inflate comes from the system zlib
    libsodium-dev       # only for the C core's own tests (the package uses PyNaCl's libsodium)
    xz-utils            # golden images are .img.xz
    util-linux          # losetup for the loop block device tests
    dosfstools          # mkfs.vfat / fsck.fat for the FAT interop tests
    mtools              # mdir / mtype for the FAT interop tests
    xdelta3             # reference VCDIFF encoder/decoder for the delta-update tests
    clang               # libFuzzer harnesses (scripts/fuzz.sh)
    libclang-rt-dev     # clang's fuzzer/ASan runtimes (libclang-rt-14-dev on Debian 12)
    valgrind            # memcheck over the C tests (scripts/sanitize.sh)
)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "bootstrap: please install: ${missing[*]}" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# Editable install: builds the native core in place (src/nhlink/_native/_core*.so).
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -c 'import nhlink._native as n; print("bootstrap: nhlink backend =", n.backend)'
