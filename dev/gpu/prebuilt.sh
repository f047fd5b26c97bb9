#!/usr/bin/env bash
# Device calls without a build on the device: the CUDA library, the test binaries and the variants
# (dev/gpu/variants.sh: .ab/v/NAME.cu pass variants, .ab/p/NAME.patch tree patches) built on the
# development machine (nvcc is installed there, sm_80 + sm_90a) and carried xz-compressed in .gl/
# (git-ignored; ~4 MB each, the carry limit is 64 MiB). A device build of the library takes minutes of the call; unpacking takes seconds.
#   bash dev/gpu/prebuilt.sh pack [BUILD]   here: build BUILD (default build, CUDA on), then .gl/*.xz:
#                                           lib-base.so, test_ops, qattn_gpu_test, cli (the qattn CLI), and per variant NAME
#                                           lib-NAME.so and gpu_test_NAME (the tests linked with its objects;
#                                           none for a NAME ending in "trace", an instrumented build)
#   . dev/gpu/prebuilt.sh unpack            on the device (sourced): into /tmp/q; sets LIB, T, OPS, CLI and Q
#                                           (Q/NAME/libqattn.so per variant, Q/gpu_test_NAME)
# Then pass the call `carry: [".gl"]`. The test binaries link the library statically.
pack() {
  local b=${1:-build}
  { [ -f "$b/CMakeCache.txt" ] || cmake -S . -B "$b" -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release; } &&
    cmake --build "$b" -j"$(nproc)" --target qattn qattn_gpu_test test_ops qattn_cli || return 1
  grep -q 'QATTN_HAVE_CUDA=1' "$b/CMakeFiles/qattn_objects.dir/flags.make" || { echo "$b has no CUDA"; return 1; }
  rm -rf .gl && mkdir -p .gl
  xz -T0 -3 -c "$b/libqattn.so" > .gl/lib-base.so.xz
  xz -T0 -3 -c "$b/tests/test_ops" > .gl/test_ops.xz
  xz -T0 -3 -c "$b/tests/gpu/qattn_gpu_test" > .gl/qattn_gpu_test.xz
  xz -T0 -3 -c "$b/qattn" > .gl/cli.xz
  local f n
  . dev/gpu/variants.sh
  for f in .ab/v/*.cu .ab/p/*.patch; do
    [ -f "$f" ] || continue
    n=$(basename "$f"); n=${n%.*}
    variant_lib "$n" "$b" || return 1
    xz -T0 -3 -c "/tmp/v-$n/libqattn.so" > ".gl/lib-$n.so.xz"
    case $n in *trace) continue ;; esac # instrumented: a library, no tests
    variant_test "$n" "$b" || return 1
    xz -T0 -3 -c "/tmp/v-$n/qattn_gpu_test" > ".gl/gpu_test_$n.xz"
  done
  ls -la .gl
}
unpack() { # once per machine: a second call (the next script of the same device call) only sets the names
  Q=/tmp/q
  LIB=$Q/base/libqattn.so T=$Q/qattn_gpu_test OPS=$Q/test_ops CLI=$Q/cli
  [ -x "$T" ] && return 0
  mkdir -p $Q
  local f n
  for f in .gl/*.xz; do xz -dc "$f" > "$Q/$(basename "$f" .xz)" & done
  wait
  chmod +x $Q/*
  for f in $Q/lib-*.so; do
    n=$(basename "$f" .so); n=${n#lib-}
    mkdir -p "$Q/$n" && ln -sf "$f" "$Q/$n/libqattn.so"
  done
}
case "${1:-}" in
pack) pack "${2:-}" ;;
unpack) unpack ;;
*) echo "usage: bash $0 pack [BUILD] | . $0 unpack" ;;
esac
