# Variants of the library built against a CMake build's objects, compiled for sm_90a only (sourced by
# quant_call.sh on the device, prebuilt.sh and pass_item_sass.sh here). Two kinds, both named NAME:
#   .ab/v/NAME.cu     a whole src/cuda/quant_i8.cu (a quantization-pass variant);
#   .ab/p/NAME.patch  a patch of the tree (git diff form); every src/cuda/*.cu it touches, and every one that
#                     includes a src/cuda/*.cuh it touches, is recompiled from a patched copy of src/.
# The results go to /tmp/v-NAME: libqattn.so (variant_lib) and qattn_gpu_test (variant_test).
nvcc_sm90a() { # SRC OBJ [nvcc args]: SRC compiled for sm_90a with the library's own CUDA flags; run in a build dir
  local src=$1 obj=$2 fl
  shift 2
  eval "$(sed -n 's/^\(CUDA_[A-Z]*\) = \(.*\)$/\1="\2"/p' CMakeFiles/qattn_objects.dir/flags.make)"
  fl=$(echo "$CUDA_FLAGS" | sed 's/-gencode=[^ ]*//g')
  # shellcheck disable=SC2086
  nvcc -forward-unknown-to-host-compiler $CUDA_DEFINES $CUDA_INCLUDES $fl -gencode=arch=compute_90a,code=sm_90a "$@" -x cu -c "$src" -o "$obj"
}
variant_sources() { # NAME: the variant's sources to compile, "FILE.cu=PATH" each (FILE: the library's object name)
  local n=$1 p=$PWD/.ab/p/$1.patch t=/tmp/v-$1/tree f h
  if [ -f "$p" ]; then # its src/ part (docs in the patch are not built)
    rm -rf "$t" && mkdir -p "$t" && cp -r src "$t" && (cd "$t" && git apply --include='src/*' "$p") || { echo "variant $n: patch failed" >&2; return 1; }
    for f in $(sed -n 's#^+++ b/src/cuda/\([a-z0-9_]*\.cu\)$#\1#p' "$p"); do echo "$f=$t/src/cuda/$f"; done
    for h in $(sed -n 's#^+++ b/src/cuda/\([a-z0-9_]*\.cuh\)$#\1#p' "$p"); do
      for f in $(grep -l "#include \"$h\"" src/cuda/*.cu); do f=$(basename "$f"); grep -q "^+++ b/src/cuda/$f$" "$p" || echo "$f=$t/src/cuda/$f"; done
    done | sort -u
  else # in src/cuda, for its quoted includes
    cp ".ab/v/$n.cu" "src/cuda/zz_$n.cu" && echo "quant_i8.cu=$PWD/src/cuda/zz_$n.cu"
  fi
}
variant_lib() { # NAME [BUILD]: the variant's objects and /tmp/v-NAME/libqattn.so, objects of BUILD (default build-gpu)
  local n=$1 b=${2:-build-gpu} d=/tmp/v-$1 s f obj link
  mkdir -p "$d"
  s=$(variant_sources "$n") || return 1
  (
    cd "$b" || exit 1
    obj=$(ls CMakeFiles/qattn.dir/objects1* | head -1) # objects1 or objects1.rsp, by CMake version
    cp "$obj" "$d/objects"
    for f in $s; do
      nvcc_sm90a "${f#*=}" "$d/${f%%=*}.o" -Xptxas -v > "$d/nvcc_${f%%=*}.log" 2>&1 ||
        { echo "variant $n: nvcc ${f%%=*} failed"; tail -5 "$d/nvcc_${f%%=*}.log"; exit 1; }
      sed -i "s#CMakeFiles/qattn_objects.dir/src/cuda/${f%%=*}.o#$d/${f%%=*}.o#" "$d/objects"
    done
    link=$(sed -e "s#-o libqattn.so[.0-9]*#-o $d/libqattn.so#" -e "s#@$obj#@$d/objects#" CMakeFiles/qattn.dir/link.txt)
    eval "$link" > "$d/link.log" 2>&1 || { echo "variant $n: link failed"; tail -5 "$d/link.log"; exit 1; }
    echo "variant $n: $(echo "$s" | sed 's/=[^ ]*//g' | tr '\n' ' ')recompiled"
    [ -f "$d/nvcc_quant_i8.cu.log" ] && echo "  pass: $(grep -A1 'i8q_fused_kernelILi128ELb0' "$d/nvcc_quant_i8.cu.log" | grep -o '[0-9]* bytes spill stores' | head -1), $(grep -A2 'i8q_fused_kernelILi128ELb0' "$d/nvcc_quant_i8.cu.log" | grep -o 'Used [0-9]* registers' | head -1)"
    exit 0
  )
  local rc=$?
  rm -f "src/cuda/zz_$n.cu"
  return $rc
}
variant_test() { # NAME [BUILD]: the GPU test linked with variant NAME's objects (after variant_lib) -> /tmp/v-NAME/qattn_gpu_test
  local n=$1 b=${2:-build-gpu} d=/tmp/v-$1 f obj
  (
    cd "$b" || exit 1
    cp libqattn.a "$d/libqattn.a" || exit 1
    for f in "$d"/*.cu.o; do ar r "$d/libqattn.a" "$f" || exit 1; done
    cd tests/gpu || exit 1
    obj=$(ls CMakeFiles/qattn_gpu_test.dir/objects1* | head -1)
    sed "s#../../libqattn.a#$d/libqattn.a#" CMakeFiles/qattn_gpu_test.dir/linkLibs.rsp > "$d/linkLibs.rsp"
    g++ @"$obj" -o "$d/qattn_gpu_test" @"$d/linkLibs.rsp" \
      -L/usr/local/cuda/targets/x86_64-linux/lib/stubs -L/usr/local/cuda/targets/x86_64-linux/lib > "$d/test_link.log" 2>&1 ||
      { echo "variant $n: test link failed"; tail -5 "$d/test_link.log"; }
  )
}
