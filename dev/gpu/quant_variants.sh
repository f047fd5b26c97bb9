# Variants of the INT8 quantization pass built against a CMake build's objects (sourced by quant_call.sh on
# the device and prebuilt.sh here): .ab/v/NAME.cu is a whole src/cuda/quant_i8.cu.
nvcc_sm90a() { # SRC OBJ [nvcc args]: SRC compiled for sm_90a with the library's own CUDA flags; run in a build dir
  local src=$1 obj=$2 fl
  shift 2
  eval "$(sed -n 's/^\(CUDA_[A-Z]*\) = \(.*\)$/\1="\2"/p' CMakeFiles/qattn_objects.dir/flags.make)"
  fl=$(echo "$CUDA_FLAGS" | sed 's/-gencode=[^ ]*//g')
  # shellcheck disable=SC2086
  nvcc -forward-unknown-to-host-compiler $CUDA_DEFINES $CUDA_INCLUDES $fl -gencode=arch=compute_90a,code=sm_90a "$@" -x cu -c "$src" -o "$obj"
}
variant_lib() { # NAME [BUILD]: .ab/v/NAME.cu -> /tmp/v-NAME/libqattn.so, objects of BUILD (default build-gpu)
  local n=$1 b=${2:-build-gpu} d=/tmp/v-$1
  mkdir -p "$d"
  cp ".ab/v/$n.cu" "src/cuda/zz_$n.cu"
  (
    cd "$b" || exit 1
    nvcc_sm90a "../src/cuda/zz_$n.cu" "$d/quant.o" -Xptxas -v > "$d/nvcc.log" 2>&1 || { echo "variant $n: nvcc failed"; tail -5 "$d/nvcc.log"; exit 1; }
    obj=$(ls CMakeFiles/qattn.dir/objects1* | head -1) # objects1 or objects1.rsp, by CMake version
    sed "s#CMakeFiles/qattn_objects.dir/src/cuda/quant_i8.cu.o#$d/quant.o#" "$obj" > "$d/objects"
    link=$(sed -e "s#-o libqattn.so[.0-9]*#-o $d/libqattn.so#" -e "s#@$obj#@$d/objects#" CMakeFiles/qattn.dir/link.txt)
    eval "$link" > "$d/link.log" 2>&1 || { echo "variant $n: link failed"; tail -5 "$d/link.log"; exit 1; }
    echo "variant $n: $(grep -A1 'i8q_fused_kernelILi128ELb0' "$d/nvcc.log" | grep -o '[0-9]* bytes spill stores' | head -1), $(grep -A2 'i8q_fused_kernelILi128ELb0' "$d/nvcc.log" | grep -o 'Used [0-9]* registers' | head -1)"
  )
  rm -f "src/cuda/zz_$n.cu"
}
variant_test() { # NAME: the GPU test linked with variant NAME's quantization pass -> /tmp/v-NAME/qattn_gpu_test
  local n=$1 b=${2:-build-gpu} d=/tmp/v-$1
  (
    cd "$b" || exit 1
    cp libqattn.a "$d/libqattn.a" && cp "$d/quant.o" "$d/quant_i8.cu.o" && ar r "$d/libqattn.a" "$d/quant_i8.cu.o" || exit 1
    cd tests/gpu || exit 1
    obj=$(ls CMakeFiles/qattn_gpu_test.dir/objects1* | head -1)
    sed "s#../../libqattn.a#$d/libqattn.a#" CMakeFiles/qattn_gpu_test.dir/linkLibs.rsp > "$d/linkLibs.rsp"
    g++ @"$obj" -o "$d/qattn_gpu_test" @"$d/linkLibs.rsp" \
      -L/usr/local/cuda/targets/x86_64-linux/lib/stubs -L/usr/local/cuda/targets/x86_64-linux/lib > "$d/test_link.log" 2>&1 ||
      { echo "variant $n: test link failed"; tail -5 "$d/test_link.log"; }
  )
}
