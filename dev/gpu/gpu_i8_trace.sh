#!/usr/bin/env bash
# One device call: build a copy of the source with dev/gpu/gpu_i8_trace.patch applied (clock trace of the
# wgmma INT8 kernel's consumer loop) and print where a loop step's cycles go (dev/gpu/gpu_i8_trace.py).
set -eu
OUT=${OUT:-out}
mkdir -p "$OUT"
SRC=/tmp/qattn-trace-src
rm -rf "$SRC" && mkdir -p "$SRC"
tar --exclude='./build*' --exclude=./.git --exclude=./.ab -cf - . | tar -x -C "$SRC"
(cd "$SRC" && patch -p1 -s < dev/gpu/gpu_i8_trace.patch)
{ cmake -S "$SRC" -B /tmp/qattn-trace-build -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/qattn-trace-build -j16 --target qattn; } \
  > "$OUT/trace_build.log" 2>&1 || { tail -30 "$OUT/trace_build.log"; exit 1; }
python3 dev/gpu/gpu_i8_trace.py --lib /tmp/qattn-trace-build/libqattn.so --out "$OUT" 2>&1 | grep -v -i warn
