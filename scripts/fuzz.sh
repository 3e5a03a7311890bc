#!/usr/bin/env bash
# Coverage-guided fuzzing, each harness for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]        # per harness; default 60
#
# C harnesses (fuzz/c, libFuzzer + ASan + UBSan, built with clang): the zip
# walker with random split points and sinks, the U-Boot env codec, the packet
# and frame decoders, the VCDIFF (delta update) decoder. Python harnesses
# (fuzz/python, atheris): meta.conf parser, Phoenix frame decoder,
# packet/frame decoders, U-Boot env codec, ZipStream and VcdiffDecoder, those
# four native vs python, and the NervesKey compressed-certificate decoder. Seeds come from the golden vectors
# (fuzz/corpus/build_seeds.py; VCDIFF seeds also come from xdelta3 when it is
# installed); fuzz/regressions/ is replayed first.
# Corpora grow in build/fuzz/work/<harness>; crashers land in
# build/fuzz/artifacts/ (turn them into fuzz/regressions/<name>.bin).
# Prints executions per harness; exits non-zero when any harness crashed.
#
# Python: $NHLINK_PYTHON, else .venv/bin/python (made by scripts/bootstrap.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SECONDS_EACH=${1:-60}
OUT=$REPO/build/fuzz

if [[ -n ${NHLINK_PYTHON:-} ]]; then
    PY=$NHLINK_PYTHON
else
    [[ -x .venv/bin/python ]] || scripts/bootstrap.sh || exit 1
    PY=$REPO/.venv/bin/python
fi

# ---- toolchain
has_toolchain() {
    command -v clang >/dev/null && compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a" >/dev/null
}
if ! has_toolchain; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "fuzz: installing clang and its fuzzer runtime"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            clang libclang-rt-dev >/dev/null 2>&1 \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                clang libclang-rt-14-dev >/dev/null || exit 1
    else
        echo "fuzz: please install clang and libclang-rt-14-dev (or the runtime matching your clang)" >&2
        exit 1
    fi
fi
"$PY" -c 'import atheris' 2>/dev/null || "$PY" -m pip install -q atheris || exit 1
"$PY" -c 'import nhlink._native._core' 2>/dev/null \
    || { PYTHONPATH=$REPO/src "$PY" -c 'import nhlink._native._core' 2>/dev/null; } \
    || echo "fuzz: warning: the native backend is not built; the differential harness will fail" >&2

# ---- build
mkdir -p "$OUT/bin" "$OUT/artifacts"
CFLAGS=(-g -O1 -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -pthread
        -D_FILE_OFFSET_BITS=64 -D_GNU_SOURCE -fno-omit-frame-pointer
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
        -Isrc/native -Itests/native)
for h in zip uboot framing vcdiff; do
    clang "${CFLAGS[@]}" -o "$OUT/bin/fuzz_$h" "fuzz/c/fuzz_$h.c" tests/native/nh_test_support.c \
        src/native/nh_*.c -lsodium -lz -pthread || { echo "fuzz: building fuzz_$h failed" >&2; exit 1; }
done
rm -rf "$OUT/corpus"
"$PY" fuzz/corpus/build_seeds.py "$OUT/corpus" >/dev/null || exit 1

# ---- run
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
COMMON=(-max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=30 -rss_limit_mb=2048)
failures=()
summary=()

run() { # name seed-folder command...
    local name=$1 seeds=$2
    shift 2
    local log=$OUT/$name.log
    mkdir -p "$OUT/work/$name"
    echo "== $name (${SECONDS_EACH}s)"
    timeout $((SECONDS_EACH * 2 + 120)) "$@" "${COMMON[@]}" -artifact_prefix="$OUT/artifacts/$name-" \
        "$OUT/work/$name" "$OUT/corpus/$seeds" fuzz/regressions >"$log" 2>&1
    local rc=$?
    local execs
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    execs=${execs:-$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')}
    if ((rc != 0)); then
        failures+=("$name")
        summary+=("$(printf '%-22s %12s execs  CRASH (rc %d, log %s)' "$name" "${execs:-0}" "$rc" "$log")")
        grep -E 'ERROR|Error|invariant|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/    /'
    else
        summary+=("$(printf '%-22s %12s execs  ok' "$name" "${execs:-0}")")
    fi
}

run c-zip zip "$OUT/bin/fuzz_zip" -max_len=600000
run c-uboot uboot "$OUT/bin/fuzz_uboot" -max_len=65536
run c-framing framing "$OUT/bin/fuzz_framing" -max_len=65536
run c-vcdiff vcdiff "$OUT/bin/fuzz_vcdiff" -max_len=300000
run py-metaconf metaconf "$PY" fuzz/python/fuzz_metaconf.py -max_len=65536
run py-phoenix phoenix "$PY" fuzz/python/fuzz_phoenix.py -max_len=65536
run py-framing framing "$PY" fuzz/python/fuzz_framing.py -max_len=65536
run py-uboot uboot "$PY" fuzz/python/fuzz_uboot.py -max_len=65536
run py-differential zip "$PY" fuzz/python/fuzz_differential.py -max_len=600000
run py-vcdiff vcdiff "$PY" fuzz/python/fuzz_vcdiff.py -max_len=300000
# -keep_seed=1: the seeds of every mode stay in the corpus (their deep paths run in
# cryptography, which atheris does not see as coverage).
run py-nerveskey nerveskey "$PY" fuzz/python/fuzz_nerveskey.py -max_len=512 -keep_seed=1

echo "== executions per harness (${SECONDS_EACH}s each)"
printf '%s\n' "${summary[@]}"
if ((${#failures[@]})); then
    echo "fuzz: crashes in: ${failures[*]} (inputs in $OUT/artifacts)" >&2
    exit 1
fi
