#!/usr/bin/env bash
# The files a device run of dev/fa_tests/run.sh needs that the device cannot fetch (it has no network):
# FlashAttention's three files from the snapshot, laid out as a checkout, and the einops wheel its
# tests import. Carry DIR with the call, then on the device:
#   pip install --no-index --no-deps DIR/wheels/*.whl
#   FA_DEVICE=cuda QATTN_LIBRARY=$LIB dev/fa_tests/run.sh DIR
# usage: dev/fa_tests/pack.sh DIR [FA_REPO]   (FA_REPO default: the local mirror's bare git dir; env FA_REV)
set -euo pipefail
dir=${1:?usage: dev/fa_tests/pack.sh DIR [FA_REPO]}
fa=${2:-/work/.mirror/Dao-AILab+flash-attention/repo}
rev=${FA_REV:-HEAD}
mkdir -p "$dir/tests" "$dir/flash_attn/layers" "$dir/wheels"
for f in tests/test_flash_attn.py flash_attn/bert_padding.py flash_attn/layers/rotary.py; do
  git -C "$fa" show "$rev:$f" > "$dir/$f"
done
python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir/wheels" einops
echo "FlashAttention $(git -C "$fa" rev-parse --short "$rev") files and $(ls "$dir/wheels") in $dir"
