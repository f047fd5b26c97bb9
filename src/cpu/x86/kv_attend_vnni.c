/* AVX-VNNI INT8 decode kernel over one cache block (contract: qattn_kv_attend_fn in
 * src/kv/kv_internal.h). Compiled with -mavx2 -mfma -mf16c -mavxvnni (the *_vnni.c rule in
 * CMakeLists.txt); the AVX-VNNI kernel table's decode entry (kv_attend), which hands FP16/BF16
 * caches to the AVX2 kernel. It is the AVX2 kernel's INT8 path with every vpmaddwd + vpaddd pair
 * replaced by one vpdpwssd (s16 x s16 pairs summed into s32, non-saturating): the same int32
 * values (exact; overflow bounds in kv_attend_avx2.c, "INT8"), the same float epilogue, so the
 * output is bitwise identical to the AVX2 kernel's (tests/test_kv_cache.c checks it). One source
 * for both keeps them from drifting apart. */
#define QATTN_KV_VNNI 1
#include "cpu/x86/kv_attend_avx2.c"
