/* The reference CPU micro-kernel: one K/V tile into the online-softmax state of m query rows,
 * in portable scalar C. Every ISA's table starts from these entries; every fast kernel is
 * tested against this one. Contract: qattn_attend_tile_fn in qattn_internal.h. */
#include "qattn_internal.h"

#include "quant/lowp.h" /* the INT8 table of the CPU table */

void qattn_attend_tile_f32_ref(const float *q, int64_t ldq, int m, int d, const float *k, const float *v, int64_t ldkv, int n,
                                const int32_t *lo, const int32_t *hi, const qattn_score_mod *mod, qattn_tile_state *st, float *scratch) {
    (void)n;
    bool modified = qattn_score_mod_active(mod);
    for (int r = 0; r < m; r++) {
        if (lo[r] >= hi[r]) continue;
        const float *qr = q + r * ldq;
        float *s = scratch;
        float tile_max = -INFINITY;
        for (int j = lo[r]; j < hi[r]; j++) {
            const float *kj = k + j * ldkv;
            float dot = 0.0f;
            for (int c = 0; c < d; c++) dot += qr[c] * kj[c];
            s[j] = dot;
        }
        if (modified) qattn_score_mod_row(mod, r, s, lo[r], hi[r]);
        for (int j = lo[r]; j < hi[r]; j++)
            if (s[j] > tile_max) tile_max = s[j]; /* NaN never wins: it reaches the row through exp2 below */
        if (!(tile_max > -INFINITY)) {
            /* The row sees keys but every score is NaN or -inf (a non-finite input): its result
             * is NaN, not "no key" (row_max -inf would turn it into a zero row, hiding the NaN). */
            st->row_max[r] = NAN;
            st->row_sum[r] = NAN;
            for (int c = 0; c < d; c++) st->acc[r * st->ld_acc + c] = NAN;
            continue;
        }
        float old_max = st->row_max[r];
        float new_max = tile_max > old_max ? tile_max : old_max;
        float *acc = st->acc + r * st->ld_acc;
        if (new_max > old_max) { /* rescale only when the max grows */
            float alpha = exp2f(old_max - new_max);
            st->row_sum[r] *= alpha;
            for (int c = 0; c < d; c++) acc[c] *= alpha;
            st->row_max[r] = new_max;
        }
        float sum = 0.0f;
        for (int j = lo[r]; j < hi[r]; j++) {
            float pj = exp2f(s[j] - new_max);
            sum += pj;
            const float *vj = v + j * ldkv;
            for (int c = 0; c < d; c++) acc[c] += pj * vj[c];
        }
        st->row_sum[r] += sum;
    }
}

const qattn_cpu_kernels qattn_kernels_ref = {
    .name = "ref",
    .attend_tile_f32 = qattn_attend_tile_f32_ref,
    .pack_rows_f32 = qattn_pack_rows_f32_ref,
    .kv_attend = qattn_kv_attend_ref,
    .int8 = &qattn_int8_kernels_ref,
};
