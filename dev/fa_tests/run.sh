#!/usr/bin/env bash
# FlashAttention's own forward tests through qattn (a flash_attn shim over the Python binding), on the
# CPU or (FA_DEVICE=cuda) the GPU. Not part of CI: it needs a FlashAttention snapshot (a git dir or a checkout).
#
# usage: dev/fa_tests/run.sh [FA_REPO] [pytest args...]
#   FA_REPO     FlashAttention git dir or checkout (default /work/.mirror/Dao-AILab+flash-attention/repo)
#   pytest args: added after the selected functions (e.g. -k "not 59" -x)
# env: FA_DEVICE (cpu, the default, or cuda: the tests keep their CUDA tensors and run on qattn's CUDA
#      backend; on a GPU machine), QATTN_LIBRARY (default build/libqattn.so), FA_SAMPLE=k/n (run a stable subset of each function's cases:
#      crc32(case id) % n < k, chosen in rewrite.py before collection), FA_JOBS (pytest-xdist workers, default 2 if installed), FA_SUMMARY
#      (file for the per-function counts), FA_TESTS (function names,
#      default: the forward ones below), FA_REV (snapshot revision, default HEAD), FA_KEEP=1 (keep tmp dir).
# Run it niced on a shared machine: nice -n 19 dev/fa_tests/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fa=${1:-/work/.mirror/Dao-AILab+flash-attention/repo}
[ $# -gt 0 ] && shift
rev=${FA_REV:-HEAD}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fa_tests.XXXXXX")
[ "${FA_KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT

# FlashAttention's files, from the snapshot into the temp dir only.
fa_show() {  # path -> stdout
  if [ -d "$fa/.git" ] || git -C "$fa" rev-parse --is-bare-repository >/dev/null 2>&1; then
    git -C "$fa" show "$rev:$1"
  else
    cat "$fa/$1"
  fi
}
mkdir -p "$tmp/pkg" "$tmp/tests"
cp -r "$here/shim/flash_attn" "$tmp/pkg/"
mkdir -p "$tmp/pkg/flash_attn/layers"
fa_show flash_attn/bert_padding.py > "$tmp/pkg/flash_attn/bert_padding.py"
fa_show flash_attn/layers/rotary.py > "$tmp/pkg/flash_attn/layers/rotary.py"
: > "$tmp/pkg/flash_attn/layers/__init__.py"
fa_show tests/test_flash_attn.py > "$tmp/tests/test_flash_attn.orig.py"
python3 "$here/rewrite.py" "$tmp/tests/test_flash_attn.orig.py" "$tmp/tests/test_flash_attn.py" ${FA_SAMPLE:-}
rm "$tmp/tests/test_flash_attn.orig.py"
cp "$here/conftest.py" "$tmp/tests/conftest.py"
echo "FlashAttention snapshot: $fa @ $(git -C "$fa" rev-parse "$rev" 2>/dev/null || echo checkout)"

export QATTN_LIBRARY=${QATTN_LIBRARY:-$root/build/libqattn.so}
export PYTHONPATH="$tmp/pkg:$root/python${PYTHONPATH:+:$PYTHONPATH}"
export FA_SUMMARY=${FA_SUMMARY:-$tmp/summary.txt}
python3 -c "import qattn; print('qattn', qattn.__version__, qattn.library_path)"

# The forward test functions (node ids: collecting only these is much faster than -k over the file).
forward=(test_flash_attn_output test_flash_attn_varlen_output test_flash_attn_qkvpacked test_flash_attn_varlen_qkvpacked
  test_flash_attn_causal test_flash_attn_varlen_causal test_flash_attn_splitkv test_flash_attn_kvcache
  test_flash_attn_varlen_paged_kv_num_splits test_flash_attn_kvcache_paged_block_table_bounds)
jobs=${FA_JOBS:-}
if [ -z "$jobs" ]; then
  python3 -c "import xdist" 2>/dev/null && jobs=2 || jobs=0
fi
xd=()
[ "$jobs" != 0 ] && xd=(-n "$jobs" -p xdist)
# FA_TESTS: a space-separated subset of the function names above (default: all of them).
sel=(${FA_TESTS:-${forward[*]}})
args=()
for t in "${sel[@]}"; do args+=("test_flash_attn.py::$t"); done
cd "$tmp/tests"
set +e
python3 -m pytest -q -p no:cacheprovider "${xd[@]}" -o console_output_style=count --tb=line -rN "${args[@]}" "$@"
rc=$?
set -e
echo "summary: $FA_SUMMARY"
exit $rc
