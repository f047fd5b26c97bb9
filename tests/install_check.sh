#!/usr/bin/env bash
# Install check: install a built tree to a temporary prefix, then compile the README's C example
# against it four ways (pkg-config shared and --static, CMake find_package(qattn) with qattn::qattn
# and qattn::qattn_static) and run each program. Fails if qattn.pc ignores the prefix or lacks
# what a static link needs (Libs.private), or if the CMake package is incomplete.
# Usage: bash tests/install_check.sh [build-dir]   (a configured and built tree; default build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(cd "${1:-build}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null

# The README's C example (the ```c block under "Using the C API"), wrapped in a main() that
# gives it its inputs and checks its result.
awk '/^## Using the C API/ {on = 1} on && /^```c/ {inblock = 1; next} inblock && /^```/ {exit} inblock' README.md > "$work/example.inc"
grep -q 'qattn_forward' "$work/example.inc" || { echo "install_check: README C example not found" >&2; exit 1; }
{
  grep '^#include' "$work/example.inc"
  cat <<'C'
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    enum { B = 2, Lq = 37, Lk = 53, H = 4, HK = 2, D = 64 };
    float *q = malloc(sizeof(float) * B * Lq * H * D), *o = malloc(sizeof(float) * B * Lq * H * D);
    float *k = malloc(sizeof(float) * B * Lk * HK * D), *v = malloc(sizeof(float) * B * Lk * HK * D);
    for (int i = 0; i < B * Lq * H * D; i++) q[i] = (float)((i * 7919) % 17) / 17.0f - 0.5f;
    for (int i = 0; i < B * Lk * HK * D; i++) k[i] = (float)((i * 104729) % 13) / 13.0f - 0.5f, v[i] = (float)(i % 11);
C
  grep -v '^#include' "$work/example.inc"
  cat <<'C'
    int ok = s == QATTN_OK;
    for (int i = 0; i < B * Lq * H * D && ok; i++) ok = isfinite(o[i]) && o[i] >= 0.0f && o[i] <= 10.0f; /* a convex mix of v */
    printf("%s\n", ok ? "example ok" : "example FAILED");
    free(q), free(k), free(v), free(o);
    return ok ? 0 : 1;
}
C
} > "$work/example.c"

cc=${CC:-cc}
pcdir=$(dirname "$(find "$prefix" -name qattn.pc -print -quit)")
export PKG_CONFIG_PATH="$pcdir"
echo "== pkg-config, shared"
read -r -a cflags <<<"$(pkg-config --cflags qattn)"
read -r -a libs <<<"$(pkg-config --libs qattn)"
libdir=$(realpath "$(pkg-config --variable=libdir qattn)")
case "$libdir" in
  "$(realpath "$prefix")"/*) ;;
  *) echo "install_check: qattn.pc's libdir '$libdir' is not under the install prefix $prefix" >&2; exit 1 ;;
esac
"$cc" -std=c11 "${cflags[@]}" "$work/example.c" -o "$work/ex_shared" "${libs[@]}" -lm
LD_LIBRARY_PATH="$libdir" "$work/ex_shared"
# ldd's output is matched in the shell, not piped to grep -q: grep quitting at the first match can
# kill ldd with SIGPIPE, and pipefail then fails a correct build (1 run in ~500 here).
deps=$(LD_LIBRARY_PATH="$libdir" ldd "$work/ex_shared")
[[ $deps == *libqattn.so* ]] || { echo "install_check: not linked to libqattn.so" >&2; exit 1; }

echo "== pkg-config, static"
read -r -a slibs <<<"$(pkg-config --libs --static qattn)"
# Only the static archive is offered to the linker: -l:libqattn.a in place of -lqattn.
"$cc" -std=c11 "${cflags[@]}" "$work/example.c" -o "$work/ex_static" "${slibs[@]/#-lqattn/-l:libqattn.a}"
"$work/ex_static"
deps=$(ldd "$work/ex_static")
[[ $deps != *libqattn.so* ]] || { echo "install_check: static build uses libqattn.so" >&2; exit 1; }

for target in qattn qattn_static; do
  echo "== CMake find_package(qattn), qattn::$target"
  mkdir -p "$work/cm_$target"
  cat > "$work/cm_$target/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.18)
project(qattn_install_check C)
find_package(qattn REQUIRED)
add_executable(example "$work/example.c")
target_link_libraries(example PRIVATE qattn::$target m)
CM
  cmake -S "$work/cm_$target" -B "$work/cm_$target/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$work/cm_$target/build" >/dev/null
  "$work/cm_$target/build/example"
done
echo "install_check: all four builds ran the README example"
