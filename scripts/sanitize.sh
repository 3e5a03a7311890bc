#!/usr/bin/env bash
# Sanitizer runs; every one must finish with zero reports.
#
#   scripts/sanitize.sh              # the whole vector suite (nox -s sanitize)
#   scripts/sanitize.sh --quick      # CI's short run: the vector subset below
#
# 1. A copy of the tree in build/asan/tree gets the extension built with
#    NHLINK_BUILD_FLAVOR=asan (ASan + UBSan); the in-place build is untouched.
#    The vector suites and the fuzz regressions run against it with the ASan
#    runtime preloaded into the interpreter (leak checking off: CPython
#    itself does not free everything at exit). Subprocesses (nhlink fwup)
#    inherit the same environment. The corpora grown by scripts/fuzz.sh
#    (build/fuzz/work), when present, are replayed through the same build.
#    Reports go to build/asan/reports/.
# 2. The C unit tests with ASan + UBSan (make -C tests/native check SAN=1).
# 3. The C unit tests under valgrind memcheck (make -C tests/native valgrind).
#
# --quick (CI) runs only the golden-vector apply tests, the fuzz regressions and
# a short native-vs-python differential (NHLINK_DIFF_EXAMPLES=15) under ASan;
# the C tests' SAN and valgrind runs are the same as in the full run.
#
# Python: $NHLINK_PYTHON, else .venv/bin/python (made by scripts/bootstrap.sh).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SUITES=(tests/backend tests/engine tests/test_differential.py tests/test_fwup_cli_vectors.py
        tests/test_fuzz_regressions.py)
DIFF_EXAMPLES=${NHLINK_DIFF_EXAMPLES:-60}
if [[ ${1:-} == --quick ]]; then
    shift
    SUITES=(tests/engine/test_vectors.py tests/test_differential.py tests/test_fuzz_regressions.py)
    DIFF_EXAMPLES=${NHLINK_DIFF_EXAMPLES:-15}
fi
OUT=$REPO/build/asan
TREE=$OUT/tree
REPORTS=$OUT/reports

if [[ -n ${NHLINK_PYTHON:-} ]]; then
    PY=$NHLINK_PYTHON
else
    [[ -x .venv/bin/python ]] || scripts/bootstrap.sh
    PY=$REPO/.venv/bin/python
fi
command -v valgrind >/dev/null || {
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
    else
        echo "sanitize: please install valgrind" >&2
        exit 1
    fi
}
export NHLINK_VECTORS=${NHLINK_VECTORS:-$REPO/../shared/vectors}

echo "== ASan/UBSan build of the extension in $TREE"
mkdir -p "$TREE"
for part in src tests fuzz setup.py pyproject.toml MANIFEST.in README.md; do
    [[ -e $part ]] || continue
    rm -rf "${TREE:?}/$part"
    cp -a "$part" "$TREE/"
done
# The release extension must not be picked up; the C tests' builds are not needed.
find "$TREE/src" -name '*.so' -delete
find "$TREE" -name '__pycache__' -prune -exec rm -rf {} +
rm -rf "$TREE/tests/native/build"
(cd "$TREE" && NHLINK_BUILD_FLAVOR=asan "$PY" setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1) \
    || { tail -30 "$OUT/build.log"; exit 1; }

ASAN_RUNTIME=$(gcc -print-file-name=libasan.so)
UBSAN_RUNTIME=$(gcc -print-file-name=libubsan.so)
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
san_env=(
    LD_PRELOAD="$ASAN_RUNTIME $UBSAN_RUNTIME"
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$REPORTS/asan"
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan"
    PYTHONMALLOC=malloc
    PYTHONPATH="$TREE/src"
    NHLINK_REQUIRE_NATIVE=1
)
core=$(cd "$TREE" && env "${san_env[@]}" "$PY" -c 'import nhlink._native._core as c; print(c.__file__)')
[[ $core == "$TREE"/* ]] || { echo "sanitize: imported $core, not the ASan build" >&2; exit 1; }
echo "   using $core"

echo "== vector suites under ASan/UBSan"
status=0
(cd "$TREE" && env "${san_env[@]}" NHLINK_DIFF_EXAMPLES="$DIFF_EXAMPLES" \
    "$PY" -m pytest -q -p no:cacheprovider "${SUITES[@]}" "$@") || status=1
if [[ -d $REPO/build/fuzz/work ]]; then
    echo "== fuzz corpora (build/fuzz/work, from scripts/fuzz.sh) under ASan/UBSan"
    (cd "$TREE" && env "${san_env[@]}" "$PY" fuzz/python/replay_corpus.py "$REPO/build/fuzz/work") || status=1
fi
if compgen -G "$REPORTS/*" >/dev/null; then
    echo "sanitize: sanitizer reports:" >&2
    head -40 "$REPORTS"/* >&2
    status=1
fi

echo "== C unit tests with ASan/UBSan"
make -s -C tests/native check SAN=1 BUILD=build/san || status=1

echo "== C unit tests under valgrind memcheck"
make -s -C tests/native valgrind BUILD=build/valgrind || status=1

if ((status)); then
    echo "sanitize: FAILED" >&2
else
    echo "sanitize: zero reports"
fi
exit $status
