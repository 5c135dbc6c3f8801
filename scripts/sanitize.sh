#!/usr/bin/env bash
# Rebuild the C engine with AddressSanitizer + UndefinedBehaviorSanitizer (gcc) and run the
# queue tests against it. The build happens in a temporary copy of the tree, so the normal
# (editable) build in the work tree is left alone.
#
# Usage: scripts/sanitize.sh [pytest args...]   (default: -x tests/queue)
#
# A Python process needs the ASan runtime loaded first: LD_PRELOAD=$(gcc -print-file-name=
# libasan.so) (gcc 12: libasan8). Leak detection is off (CPython itself "leaks" at exit);
# any ASan or UBSan report aborts the test process.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cc=${CC:-gcc}
libasan=$("$cc" -print-file-name=libasan.so)
if [ ! -e "$libasan" ] || [ "$libasan" = libasan.so ]; then
    echo "sanitize: $cc has no libasan.so (install gcc / libasan8)" >&2
    exit 1
fi
libasan=$(readlink -f "$libasan")

work=$(mktemp -d "${TMPDIR:-/tmp}/pmq-asan.XXXXXX")
trap 'rm -rf "$work"' EXIT
# tracked files plus untracked, not ignored ones (so it also works before a commit)
(cd "$root" && git ls-files -z --cached --others --exclude-standard) \
    | (cd "$root" && xargs -0 cp --parents -t "$work" 2>/dev/null || true)
cd "$work"
rm -f pymqueue/_pmq_c*.so

san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
export CC="$cc"
export CFLAGS="${CFLAGS:-} -O1 -g $san"
export LDFLAGS="${LDFLAGS:-} $san"
python3 setup.py -q build_ext --inplace --force

if [ "$#" -eq 0 ]; then
    set -- -x tests/queue
fi
export LD_PRELOAD="$libasan${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
so=$(ls pymqueue/_pmq_c*.so)
if ! ldd "$so" | grep 'libasan\|libubsan' >/dev/null; then
    echo "sanitize: $so is not instrumented (CFLAGS/LDFLAGS not applied?)" >&2
    exit 1
fi
python3 -c 'import pymqueue._pmq_c as m, sys; print("sanitize: engine", m.__file__, file=sys.stderr)'
python3 -m pytest -p no:cacheprovider "$@"
