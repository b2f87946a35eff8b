#!/usr/bin/env bash
# Runs the CPU kernels' tests against a build of hbfast.ops._C with AddressSanitizer and
# UndefinedBehaviorSanitizer (HBFAST_SANITIZE=address,undefined): out-of-bounds reads and writes,
# use-after-free, signed overflow, misaligned or null accesses in any C++ kernel fail the run.
#
#   bash scripts/sanitize_tests.sh              # in an environment with hbfast's test dependencies
#   bash scripts/sanitize_tests.sh -k topk      # extra pytest arguments
#
# The sanitized build goes to build/sanitize and is installed into a separate directory that is put
# first on PYTHONPATH, so the normal install is untouched. The sanitizer runtimes must be loaded
# before Python's own libraries (LD_PRELOAD); leak checks are off (CPython and torch keep memory
# until exit by design). CUDA is not built: the sanitizers check host code.
set -euo pipefail
cd "$(dirname "$0")/.."
target=build/sanitize-site
rm -rf "$target"
HBFAST_SANITIZE=address,undefined HBFAST_CUDA=OFF python -m pip install -q --no-build-isolation --no-deps \
  -Cbuild-dir=build/sanitize --target "$target" .
runtimes="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# The CPU kernels: losses (both), search, metrics, the sampler, the products; GPU tests skip. Left
# out: the comparisons with pytrec_eval / trec_eval (pytrec_eval's own C++ extension aborts under ASan's
# preload; the tests named *trec*) and the
# B = 65536 accuracy cases (minutes each under ASan).
# The launcher drops an editable install's import hook for hbfast (it would win over PYTHONPATH) and
# refuses to run unless hbfast.ops._C is the sanitized build.
PYTHONPATH="$PWD/$target${PYTHONPATH:+:$PYTHONPATH}" LD_PRELOAD="$runtimes" python - "$PWD/$target" \
  tests/test_losses.py tests/test_siglip.py tests/test_loss_accuracy.py tests/test_search.py tests/test_metrics.py \
  tests/test_sampling.py tests/test_gemm.py -q -p no:cacheprovider -k "not large_batch and not trec" "$@" <<'PY'
import os, sys
target = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "hbfast" not in type(f).__module__]
for name in [m for m in sys.modules if m == "hbfast" or m.startswith("hbfast.")]:
    del sys.modules[name]
import hbfast.ops._C
if not os.path.abspath(hbfast.ops._C.__file__).startswith(os.path.abspath(target)):
    sys.exit(f"sanitize_tests: hbfast.ops._C is {hbfast.ops._C.__file__}, not the sanitized build in {target}")
print(f"sanitized hbfast.ops._C: {hbfast.ops._C.__file__}", flush=True)
import pytest
sys.exit(pytest.main(sys.argv[2:]))
PY
