// A decode step through the pre-norm Llama blocks of a quantized model, in one call. Each block:
// RMSNorm, the fused q/k/v product, the rotation, the new key and value written to the float16
// cache, attention of the one query, the output product and the residual; RMSNorm, the fused
// gate/up product, SwiGLU, the down product and the residual. Where a block has them (Gemma 3's):
// RMSNorm on each head's queries and keys before the rotation, RMSNorm on the attention's and the
// MLP's outputs before each joins the residual, GeGLU in place of SwiGLU, and a sliding window:
// its keys and values in a ring of the cache (kv_cache.py), read under a mask of the keys the
// window sees, with rotations of their own. The same steps as the block's operators, called one by
// one (group_product.h, elementwise.h, one_query.h), so the result is theirs bit for bit (but for
// GeGLU's tanh, which PyTorch rounds otherwise); but the threads start once for the step, not once for each of a block's
// five parallel operators, and meet at a spin barrier between the steps that need each other's
// results (six a block). The steps between products are small, and each thread does them whole
// where that saves a barrier: both normalise and round every product's input themselves.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "elementwise.h"
#include "group_product.h"
#include "one_query.h"
#include "spin_barrier.h"

namespace {

// A product's weight: its packed bytes, and what they hold.
struct Weight {
  const uint8_t* bytes;
  int64_t blocks, groups;  // output rows / 16, inputs / 32
  int bits;
};

Weight weight_of(const at::Tensor& packed, int64_t inputs, const char* name) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.is_contiguous() &&
              (packed.size(2) == group_bytes<4> || packed.size(2) == group_bytes<8>) &&
              packed.size(1) * kGroup == inputs,
              "decode_blocks: ", name, " must be an int4 or int8 packed weight of ", inputs, " inputs");
  return {packed.const_data_ptr<uint8_t>(), packed.size(0), packed.size(1), packed.size(2) == group_bytes<4> ? 4 : 8};
}

// This thread's share of the blocks of y = x @ w^T: x as bfloat16 bits with each group's sum,
// y (rows, n) float32.
void product_share(const Weight& w, const uint16_t* x_bits, const float* x_sums, int64_t rows, float* y, int tid,
                   int team) {
  const Inputs in{x_bits, x_sums, w.groups};
  const Share blocks = share(w.blocks, tid, team);
  if (w.bits == 4) block_range<4>(in, rows, w.bytes, blocks.first, blocks.last, y, w.blocks * kBlock);
  else block_range<8>(in, rows, w.bytes, blocks.first, blocks.last, y, w.blocks * kBlock);
}

// 16 float32 values rounded to float16 (to nearest even, as PyTorch's copy into a float16 tensor)
void store_half(c10::Half* out, __m512 values) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT));
}

enum Activation { kSiLU = 0, kGELUTanh = 1 };  // of the gated MLP: SwiGLU, GeGLU

// What every block of the step shares: its input and output, shapes and positions.
struct Step {
  const float* x;  // (B, d)
  const float *cos, *sin;  // (B, D): each row's rotation in global layers
  const float *window_cos, *window_sin;  // (B, D): in sliding layers
  const bool* window_mask;  // (B, ring slots) rows `window_mask_stride` apart: the keys a sliding layer sees
  int64_t window_mask_stride;
  int64_t rows, d, heads, kv_heads, ff;
  int64_t position;  // where a global layer's new keys and values go; it reads [0, position]
  int64_t spans;  // the most any block splits each key/value head's keys into: room for the partials
  double eps;
  float scale;
  Activation activation;
  float* out;  // (B, d)
};

struct Block {
  const float *attn_norm, *mlp_norm;
  const float *q_norm, *k_norm, *attn_out_norm, *mlp_out_norm;  // null where the block has none
  Weight qkv, o, gate_up, down;
  c10::Half *keys, *values;  // (B, H_kv, S, D), rows `cache_strides` apart
  int64_t cache_strides[3];
  bool sliding;  // keys and values in a ring of S slots, read under the window's mask
  int64_t slot, keys_read, spans;  // where the new key goes, how many slots attention reads, in how many spans
};

// Buffers every thread reads: the products' outputs, the rotated queries and attention's partial results.
struct Shared {
  std::vector<float> qkv, queries, o, gate_up, down, partial_sums;
  std::vector<float> stream[2];  // the blocks' outputs, but the last's: the residual stream
  std::vector<Partial> partials;
};

// One block: x (B, d) in, out (B, d) written by the threads' shares, after the last barrier.
template <int Chunks>
void run_block(const Step& step, const Block& w, const float* x, float* out, Shared& shared, SpinBarrier& barrier,
               int tid, int team) {
  constexpr int64_t D = 16 * Chunks;
  const int64_t B = step.rows, d = step.d, H = step.heads, H_kv = step.kv_heads, group = H / H_kv;
  const int64_t qkv_n = (H + 2 * H_kv) * D;
  const int64_t widest = std::max({d, H * D, step.ff});
  thread_local std::vector<float> inputs, residual, scores, normed;
  thread_local std::vector<uint16_t> bits;
  thread_local std::vector<float> sums;
  inputs.resize(B * widest);
  residual.resize(B * d);
  normed.resize(B * d);
  bits.resize(B * widest);
  sums.resize(B * widest / kGroup);
  // each thread rounds the inputs of every product itself: no barrier, and a few hundred values
  auto round = [&](int64_t n) { round_inputs(inputs.data(), B * n, bits.data(), sums.data()); };

  for (int64_t b = 0; b < B; ++b) rms_norm_row(x + b * d, w.attn_norm, d, step.eps, inputs.data() + b * d);
  round(d);
  product_share(w.qkv, bits.data(), sums.data(), B, shared.qkv.data(), tid, team);
  barrier.wait();

  // norm and rotate the queries and keys, and store the keys and values in the cache: a row of D values each
  const float* cos = w.sliding ? step.window_cos : step.cos;
  const float* sin = w.sliding ? step.window_sin : step.sin;
  const Share heads = share(B * (H + 2 * H_kv), tid, team);
  for (int64_t task = heads.first; task < heads.last; ++task) {
    const int64_t b = task / (H + 2 * H_kv), head = task % (H + 2 * H_kv);
    const float* in = shared.qkv.data() + b * qkv_n + head * D;
    float head_normed[D];
    const float* head_norm = head < H ? w.q_norm : w.k_norm;
    if (head < H + H_kv && head_norm != nullptr) {
      rms_norm_row(in, head_norm, D, step.eps, head_normed);
      in = head_normed;
    }
    if (head < H) {
      rotate_row(in, cos + b * D, sin + b * D, D, shared.queries.data() + (b * H + head) * D);
      continue;
    }
    const bool key = head < H + H_kv;
    const int64_t kv_head = key ? head - H : head - H - H_kv;
    float rotated[D];
    if (key) rotate_row(in, cos + b * D, sin + b * D, D, rotated);
    c10::Half* row = (key ? w.keys : w.values) + b * w.cache_strides[0] + kv_head * w.cache_strides[1] +
                     w.slot * w.cache_strides[2];
    for (int64_t i = 0; i < D; i += 16) store_half(row + i, _mm512_loadu_ps((key ? rotated : in) + i));
  }
  barrier.wait();

  // attention over the slots [0, keys_read) (a global layer's positions [0, position]; a sliding
  // layer's ring, under its mask): tasks of a span of one key/value head's keys, as
  // one_query_attention shares them, so that the sums come out as its do
  const int64_t keys = w.keys_read, kv_rows = B * H_kv, n_spans = w.spans;
  const int64_t span_keys = (keys + n_spans - 1) / n_spans;
  scores.resize(group * span_keys);
  const Share tasks = share(kv_rows * n_spans, tid, team);
  for (int64_t task = tasks.first; task < tasks.last; ++task) {
    const int64_t head = task / n_spans, span = task % n_spans, b = head / H_kv, h = head % H_kv;
    const int64_t first = span * span_keys, last = std::min(keys, first + span_keys);
    const int64_t cache_offset = b * w.cache_strides[0] + h * w.cache_strides[1];
    const bool* mask = w.sliding ? step.window_mask + b * step.window_mask_stride : nullptr;
    one_span<Chunks>(shared.queries.data() + (b * H + h * group) * D, D, w.keys + cache_offset,
                     w.values + cache_offset, w.cache_strides[2], mask, first, last, step.scale,
                     static_cast<int>(group), scores.data(), shared.partials.data() + task * group);
  }
  barrier.wait();

  for (int64_t head = 0; head < kv_rows; ++head) {
    for (int64_t g = 0; g < group; ++g)
      combine<Chunks>(shared.partials.data() + head * n_spans * group + g, static_cast<int>(n_spans), group,
                      inputs.data() + (head * group + g) * D);  // (B, H, D): query heads in order
  }
  round(H * D);
  product_share(w.o, bits.data(), sums.data(), B, shared.o.data(), tid, team);
  barrier.wait();

  // each sublayer's output normed first where the block norms it (Gemma's "sandwich")
  auto sublayer_output = [&](const std::vector<float>& product, const float* norm) -> const float* {
    if (norm == nullptr) return product.data();
    for (int64_t b = 0; b < B; ++b) rms_norm_row(product.data() + b * d, norm, d, step.eps, normed.data() + b * d);
    return normed.data();
  };
  const float* attended = sublayer_output(shared.o, w.attn_out_norm);
  for (int64_t i = 0; i < B * d; ++i) residual[i] = x[i] + attended[i];
  for (int64_t b = 0; b < B; ++b) rms_norm_row(residual.data() + b * d, w.mlp_norm, d, step.eps, inputs.data() + b * d);
  round(d);
  product_share(w.gate_up, bits.data(), sums.data(), B, shared.gate_up.data(), tid, team);
  barrier.wait();

  for (int64_t b = 0; b < B; ++b) {
    const float* gate_up = shared.gate_up.data() + b * 2 * step.ff;
    if (step.activation == kGELUTanh) gelu_tanh_mul_row(gate_up, step.ff, inputs.data() + b * step.ff);
    else silu_mul_row(gate_up, step.ff, inputs.data() + b * step.ff);
  }
  round(step.ff);
  product_share(w.down, bits.data(), sums.data(), B, shared.down.data(), tid, team);
  barrier.wait();

  const float* mlp_out = sublayer_output(shared.down, w.mlp_out_norm);
  const Share outputs = share(B * d, tid, team);
  for (int64_t i = outputs.first; i < outputs.last; ++i) out[i] = residual[i] + mlp_out[i];
}

template <int Chunks>
void run_blocks(const Step& step, const std::vector<Block>& blocks, Shared& shared, SpinBarrier& barrier, int tid,
                int team) {
  const size_t last = blocks.size() - 1;
  for (size_t i = 0; i <= last; ++i) {
    const float* x = i == 0 ? step.x : shared.stream[(i - 1) % 2].data();
    run_block<Chunks>(step, blocks[i], x, i == last ? step.out : shared.stream[i % 2].data(), shared, barrier, tid,
                      team);
    if (i < last) barrier.wait();  // the next block reads all of this one's output; the last's, the caller
  }
}

// A norm's weight of n float32 values for block i, or null where the list is empty (no block has one).
const float* optional_norm(at::TensorList norms, size_t i, int64_t n, const char* name) {
  if (norms.empty()) return nullptr;
  TORCH_CHECK(norms[i].scalar_type() == at::kFloat && norms[i].is_contiguous() && norms[i].numel() == n,
              "decode_blocks: ", name, " must be float32 of ", n, " values");
  return norms[i].const_data_ptr<float>();
}

// The norms' weights, products' packed weights and cache of block i, checked against the step's shapes.
struct BlockTensors {
  at::TensorList attn_norms, qkvs, os, mlp_norms, gate_ups, downs, q_norms, k_norms, attn_out_norms, mlp_out_norms;
  at::TensorList keys, values;
};

Block block_of(const BlockTensors& t, size_t i, bool sliding, int64_t B, int64_t d, int64_t heads, int64_t H_kv,
               int64_t D, int64_t position, int64_t threads) {
  Block block{};
  block.attn_norm = optional_norm(t.attn_norms, i, d, "attn_norm");
  block.mlp_norm = optional_norm(t.mlp_norms, i, d, "mlp_norm");
  block.q_norm = optional_norm(t.q_norms, i, D, "q_norm");
  block.k_norm = optional_norm(t.k_norms, i, D, "k_norm");
  block.attn_out_norm = optional_norm(t.attn_out_norms, i, d, "attn_out_norm");
  block.mlp_out_norm = optional_norm(t.mlp_out_norms, i, d, "mlp_out_norm");
  const at::Tensor &keys = t.keys[i], &values = t.values[i];
  TORCH_CHECK(keys.scalar_type() == at::kHalf && values.scalar_type() == at::kHalf && keys.dim() == 4 &&
              keys.stride(3) == 1 && keys.size(0) == B && keys.size(1) == H_kv && keys.size(3) == D &&
              values.sizes() == keys.sizes() && values.strides() == keys.strides(),
              "decode_blocks: each block's keys and values must be float16 (B, H_kv, S, D) tensors of one layout, "
              "rows contiguous");
  block.qkv = weight_of(t.qkvs[i], d, "qkv");
  block.gate_up = weight_of(t.gate_ups[i], d, "gate_up");
  const int64_t ff = block.gate_up.blocks * kBlock / 2;
  block.o = weight_of(t.os[i], heads * D, "o");
  block.down = weight_of(t.downs[i], ff, "down");
  TORCH_CHECK(block.qkv.blocks * kBlock == (heads + 2 * H_kv) * D && block.o.blocks * kBlock == d &&
              block.down.blocks * kBlock == d, "decode_blocks: the weights' shapes do not fit a block of ", heads,
              " heads of ", D);
  block.keys = const_cast<c10::Half*>(keys.const_data_ptr<c10::Half>());
  block.values = const_cast<c10::Half*>(values.const_data_ptr<c10::Half>());
  for (int j = 0; j < 3; ++j) block.cache_strides[j] = keys.stride(j);
  block.sliding = sliding;
  const int64_t slots = keys.size(2);
  TORCH_CHECK(sliding || position < slots, "decode_blocks: position ", position, " is outside the cache");
  block.slot = sliding ? position % slots : position;
  block.keys_read = sliding ? slots : position + 1;
  block.spans = span_count(B * H_kv, block.keys_read, heads / H_kv, threads);
  return block;
}

// x: (B, 1, d) float32; for each block, its norms' weights (d) float32, its products' packed int4
// or int8 weights (kernels.pack: qkv, o, gate_up, down), its per-head norms of queries and keys
// (D) and norms of the attention's and MLP's outputs (d), each list empty where no block has them,
// whether it slides, and its float16 cache, keys and values (B, H_kv, S, D) with rows contiguous:
// a global layer's written at `position` and read over [0, position], a sliding layer's (a ring)
// written at position % S and read where `window_mask` (B, 1, 1, S) bool allows. cos, sin: (B, 1,
// 1, D) float32, the rotation of each row's position in global layers; window_cos, window_sin: in
// sliding ones. activation: 0 SwiGLU, 1 GeGLU (tanh). Returns the last block's output, (B, 1, d) float32.
at::Tensor decode_blocks(const at::Tensor& x, at::TensorList attn_norms, at::TensorList qkvs, at::TensorList os,
                         at::TensorList mlp_norms, at::TensorList gate_ups, at::TensorList downs, at::TensorList q_norms,
                         at::TensorList k_norms, at::TensorList attn_out_norms, at::TensorList mlp_out_norms,
                         at::IntArrayRef sliding, const at::Tensor& cos, const at::Tensor& sin,
                         const at::Tensor& window_cos, const at::Tensor& window_sin,
                         const std::optional<at::Tensor>& window_mask, at::TensorList keys, at::TensorList values,
                         int64_t position, int64_t heads, double eps, double scale, int64_t activation) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 3 && x.size(1) == 1 && x.is_contiguous(),
              "decode_blocks: x must be a contiguous float32 (B, 1, d) tensor");
  const size_t n = qkvs.size();
  auto per_block = [&](at::TensorList list, bool optional) { return list.size() == n || (optional && list.empty()); };
  TORCH_CHECK(n > 0 && per_block(attn_norms, false) && per_block(os, false) && per_block(mlp_norms, false) &&
              per_block(gate_ups, false) && per_block(downs, false) && per_block(keys, false) &&
              per_block(values, false) && per_block(q_norms, true) && per_block(k_norms, true) &&
              per_block(attn_out_norms, true) && per_block(mlp_out_norms, true) && sliding.size() == n,
              "decode_blocks: every list must hold one tensor per block (the optional norms' lists: or none)");
  TORCH_CHECK(activation == kSiLU || activation == kGELUTanh, "decode_blocks: activation must be 0 or 1");
  const int64_t B = x.size(0), d = x.size(2);
  TORCH_CHECK(keys[0].dim() == 4, "decode_blocks: keys and values must be (B, H_kv, S, D)");
  const int64_t H_kv = keys[0].size(1), D = keys[0].size(3);
  TORCH_CHECK(D == 32 || D == 64 || D == 128 || D == 256, "decode_blocks: head size must be 32, 64, 128 or 256, not ",
              D);
  TORCH_CHECK(0 <= position, "decode_blocks: position ", position, " is outside the cache");
  TORCH_CHECK(heads % H_kv == 0 && heads / H_kv <= kMaxGroup, "decode_blocks: ", heads, " query heads for ", H_kv,
              " key/value heads");
  for (const at::Tensor* r : {&cos, &sin, &window_cos, &window_sin})
    TORCH_CHECK(r->scalar_type() == at::kFloat && r->is_contiguous() && r->numel() == B * D,
                "decode_blocks: cos and sin must be float32 (B, 1, 1, D)");
  const bool any_sliding = std::any_of(sliding.begin(), sliding.end(), [](int64_t s) { return s != 0; });
  TORCH_CHECK(!any_sliding || window_mask.has_value(), "decode_blocks: sliding layers need their window's mask");
  const int64_t group = heads / H_kv, kv_rows = B * H_kv;
  // counted here: inside the parallel region at::get_num_threads() counts 1
  const int64_t threads = at::get_num_threads();
  const BlockTensors tensors{attn_norms, qkvs, os, mlp_norms, gate_ups, downs, q_norms, k_norms, attn_out_norms,
                             mlp_out_norms, keys, values};
  std::vector<Block> blocks;
  blocks.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    blocks.push_back(block_of(tensors, i, sliding[i] != 0, B, d, heads, H_kv, D, position, threads));
    TORCH_CHECK(blocks[i].attn_norm != nullptr && blocks[i].mlp_norm != nullptr, "decode_blocks: norms missing");
  }
  if (any_sliding) {
    const at::Tensor& m = *window_mask;
    const auto ring = std::find_if(blocks.begin(), blocks.end(), [](const Block& b) { return b.sliding; });
    TORCH_CHECK(m.scalar_type() == at::kBool && m.dim() == 4 && m.size(0) == B && m.size(3) == ring->keys_read &&
                m.stride(3) == 1 && std::all_of(blocks.begin(), blocks.end(), [&](const Block& b) {
                  return !b.sliding || b.keys_read == ring->keys_read;
                }), "decode_blocks: the window's mask must be bool (B, 1, 1, S), S the ring's slots");
  }
  const int64_t ff = blocks[0].gate_up.blocks * kBlock / 2;
  const bool one_size = std::all_of(blocks.begin(), blocks.end(),
                                    [&](const Block& b) { return b.gate_up.blocks == blocks[0].gate_up.blocks; });
  TORCH_CHECK(one_size, "decode_blocks: every block's MLP must be of one size");
  at::Tensor out = at::empty({B, 1, d}, x.options());
  const int64_t n_spans = std::max_element(blocks.begin(), blocks.end(), [](const Block& a, const Block& b) {
                            return a.spans < b.spans;
                          })->spans;
  const Step step{x.const_data_ptr<float>(), cos.const_data_ptr<float>(), sin.const_data_ptr<float>(),
                  window_cos.const_data_ptr<float>(), window_sin.const_data_ptr<float>(),
                  any_sliding ? window_mask->const_data_ptr<bool>() : nullptr,
                  any_sliding ? window_mask->stride(0) : 0, B, d, heads, H_kv, ff, position, n_spans, eps,
                  static_cast<float>(scale), static_cast<Activation>(activation), out.data_ptr<float>()};

  thread_local Shared calls_buffers;
  Shared& shared = calls_buffers;  // the caller's, named so: the lambda below would name each thread's own
  shared.qkv.resize(B * (heads + 2 * H_kv) * D);
  shared.queries.resize(B * heads * D);
  shared.o.resize(B * d);
  shared.gate_up.resize(B * 2 * ff);
  shared.down.resize(B * d);
  shared.stream[0].resize(B * d);
  shared.stream[1].resize(B * d);
  shared.partial_sums.resize(kv_rows * n_spans * group * D);
  shared.partials.resize(kv_rows * n_spans * group);
  for (size_t i = 0; i < shared.partials.size(); ++i) shared.partials[i].sums = shared.partial_sums.data() + i * D;

  on_team(threads, [&](SpinBarrier& meet, int tid, int team) {
    if (D == 32) run_blocks<2>(step, blocks, shared, meet, tid, team);
    else if (D == 64) run_blocks<4>(step, blocks, shared, meet, tid, team);
    else if (D == 128) run_blocks<8>(step, blocks, shared, meet, tid, team);
    else run_blocks<16>(step, blocks, shared, meet, tid, team);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nexttoken, m) {
  m.def("decode_blocks(Tensor x, Tensor[] attn_norms, Tensor[] qkvs, Tensor[] os, Tensor[] mlp_norms, "
        "Tensor[] gate_ups, Tensor[] downs, Tensor[] q_norms, Tensor[] k_norms, Tensor[] attn_out_norms, "
        "Tensor[] mlp_out_norms, int[] sliding, Tensor cos, Tensor sin, Tensor window_cos, Tensor window_sin, "
        "Tensor? window_mask, Tensor(a!)[] keys, Tensor(b!)[] values, int position, int heads, float eps, "
        "float scale, int activation) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("decode_blocks", &decode_blocks);
}
