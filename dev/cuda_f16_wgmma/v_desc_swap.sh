#!/usr/bin/env bash
# Exchange the leading and stride byte offsets of desc_sw128_mn (src/cuda/hopper.cuh); see README.md.
set -eu
F=src/cuda/hopper.cuh
case "${1:-}" in
apply)
  perl -0pi -e 's/\Q((uint64_t)((mn_bytes & 0x3FFFF) >> 4) << 16) | ((uint64_t)(1024 >> 4) << 32)\E/((uint64_t)(1024 >> 4) << 16) | ((uint64_t)((mn_bytes & 0x3FFFF) >> 4) << 32)/' $F
  grep -qF '((uint64_t)((mn_bytes & 0x3FFFF) >> 4) << 32)' $F ;;
revert)
  perl -0pi -e 's/\Q((uint64_t)(1024 >> 4) << 16) | ((uint64_t)((mn_bytes & 0x3FFFF) >> 4) << 32)\E/((uint64_t)((mn_bytes & 0x3FFFF) >> 4) << 16) | ((uint64_t)(1024 >> 4) << 32)/' $F
  grep -qF '((uint64_t)((mn_bytes & 0x3FFFF) >> 4) << 16)' $F ;;
*) echo "usage: $0 apply|revert"; exit 2 ;;
esac
