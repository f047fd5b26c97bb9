/* qattn_kv_cache_export: the host cache's pointer-free layout, for a device copy (GPU decode,
 * src/cuda/kv_decode_driver.cu). Without the CUDA backend, qattn_kv_decode_cuda is a stub. */
#include "kv/kv_internal.h"

qattn_status qattn_kv_cache_export(qattn_ctx *ctx, const qattn_kv_cache *c, qattn_kv_cache_layout *l) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (!c || !l) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_kv_cache_export: %s is NULL", !c ? "cache" : "layout");
    memset(l, 0, sizeof *l);
    l->arena = c->arena;
    l->block_table = c->block_table;
    l->arena_bytes = c->n_blocks * c->block_bytes + qattn_kv_transform_bytes(c); /* INT8: the transforms at the tail */
    l->table_entries = (int64_t)c->max_seqs * c->max_blocks_per_seq;
    l->n_blocks = c->n_blocks;
    l->block_bytes = c->block_bytes;
    l->max_blocks_per_seq = c->max_blocks_per_seq;
    l->head_bytes = c->head_bytes;
    l->v_offset = c->v_offset;
    l->ks_offset = c->ks_offset;
    l->vs_offset = c->vs_offset;
    l->n_kv_heads = c->n_kv_heads;
    l->head_dim = c->head_dim;
    l->block_size = c->block_size;
    l->dtype = c->dtype;
    l->max_seqs = c->max_seqs;
    return QATTN_OK;
}

#if !defined(QATTN_HAVE_CUDA)
qattn_status qattn_kv_decode_cuda(qattn_ctx *ctx, const qattn_kv_cache *cache, const qattn_kv_device_cache *dev,
                                  const qattn_decode_params *dp) {
    (void)cache, (void)dev, (void)dp;
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_kv_decode_cuda: this build of qattn has no CUDA backend");
}
#endif
