// A decode step through the post-norm decoder blocks of Marian's tiny translation models, in one
// call. Each block (model/ssru.py, transformer.DecoderBlock): the SSRU's fused product, its state
// update (written to the cache) and ReLU, the residual and LayerNorm; the cross-attention query, its
// attention over the source's keys and values (computed once per sentence), the output product, the
// residual and LayerNorm; the MLP's two products with ReLU between, the residual and LayerNorm. Every
// product is a row-scaled int8 one (int8_rows.h) with float32 inputs and sums, as the operators
// compute them one by one. The threads start once for the step and meet at a spin barrier between
// the steps that need each other's results (decode_blocks.cpp does the same for Llama's blocks);
// the steps between products are small, and each thread does them whole where that saves a barrier.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <vector>

#include "int8_rows.h"
#include "one_query.h"
#include "spin_barrier.h"

namespace {

constexpr size_t kTensorsPerBlock = 21;  // see block_of
constexpr int64_t kThreadedRows = 4;      // rows from which a step's blocks are shared between threads

struct Norm {
  const float *weight, *bias;
};

struct SsruBlock {
  RowWeight ssru, q, o, up, down;
  const float* forget_bias;
  Norm attn_norm, cross_norm, mlp_norm;
  float *states, *state_copies;  // the cache's keys and values of this layer: the SSRU's state, twice
  const float *keys, *values;     // cross-attention, (B, H_kv, S, D) at `kv_strides`
  int64_t kv_strides[3];
};

struct Step {
  int64_t rows, d, heads, kv_heads, head_dim, ff, sources;
  int64_t position;            // where the new state goes; the last one is at position - 1
  int64_t state_strides[3];    // of the cache's (B, H_kv, S, D) keys
  const bool* source_mask;     // (B, S)
  float eps, scale;
  float* out;                  // (B, d)
};

struct Shared {
  std::vector<float> ssru, q, attention, o, up, down, partial_sums;
  std::vector<Partial> partials;
};

// out = LayerNorm(a + b) of one row of n values: (v - mean) / sqrt(variance + eps) * weight + bias
void add_norm_row(const float* a, const float* b, const Norm& norm, int64_t n, float eps, float* out) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = a[i] + b[i];
    sum += out[i];
  }
  const float mean = sum / static_cast<float>(n);
  float squares = 0;
  for (int64_t i = 0; i < n; ++i) squares += (out[i] - mean) * (out[i] - mean);
  const float inverse = 1.0f / std::sqrt(squares / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (out[i] - mean) * inverse * norm.weight[i] + norm.bias[i];
}

void product_share(const RowWeight& w, const float* x, int64_t rows, float* y, int tid, int team) {
  const Share blocks = share(w.n / kRowBlock, tid, team);
  row_blocks(w, x, w.k, rows, blocks.first, blocks.last, y);
}

template <int Chunks>
void run_block(const Step& step, const SsruBlock& w, std::vector<float>& x, Shared& shared, SpinBarrier& barrier,
               int tid, int team) {
  const int64_t B = step.rows, d = step.d, D = step.head_dim, H = step.heads, H_kv = step.kv_heads;
  thread_local std::vector<float> hidden, scores;
  hidden.resize(B * std::max(d, step.ff));

  product_share(w.ssru, x.data(), B, shared.ssru.data(), tid, team);
  barrier.wait();

  // c = f * c_prev + (1 - f) * W x with f = sigmoid(W_f x + b_f); h = relu(c): every thread for
  // every row (d values each), one of them writing the state to the cache
  for (int64_t b = 0; b < B; ++b) {
    const float* candidate = shared.ssru.data() + b * 2 * d;
    const float* forget_in = candidate + d;
    for (int64_t i = 0; i < d; ++i) {
      const int64_t head = i / D, lane = i % D;
      const int64_t at = b * step.state_strides[0] + head * step.state_strides[1] + lane;
      const float previous = step.position == 0 ? 0.0f : w.states[at + (step.position - 1) * step.state_strides[2]];
      const float forget = 1.0f / (1.0f + std::exp(-(forget_in[i] + w.forget_bias[i])));
      const float state = candidate[i] + forget * (previous - candidate[i]);  // torch.lerp's order
      if (tid == 0) {
        w.states[at + step.position * step.state_strides[2]] = state;
        w.state_copies[at + step.position * step.state_strides[2]] = state;
      }
      hidden[b * d + i] = std::max(state, 0.0f);
    }
    add_norm_row(x.data() + b * d, hidden.data() + b * d, w.attn_norm, d, step.eps, x.data() + b * d);
  }
  product_share(w.q, x.data(), B, shared.q.data(), tid, team);
  barrier.wait();

  // attention of each query head over its row's source, one span per head
  const int group = static_cast<int>(H / H_kv);
  scores.resize(group * step.sources);
  const Share tasks = share(B * H_kv, tid, team);
  for (int64_t task = tasks.first; task < tasks.last; ++task) {
    const int64_t b = task / H_kv, h = task % H_kv;
    const int64_t offset = b * w.kv_strides[0] + h * w.kv_strides[1];
    Partial* partials = shared.partials.data() + task * group;
    one_span<Chunks>(shared.q.data() + (b * H + h * group) * D, D, w.keys + offset, w.values + offset,
                     w.kv_strides[2], step.source_mask + b * step.sources, 0, step.sources, step.scale, group,
                     scores.data(), partials);
    for (int g = 0; g < group; ++g)
      combine<Chunks>(partials + g, 1, 1, shared.attention.data() + (b * H + h * group + g) * D);
  }
  barrier.wait();

  product_share(w.o, shared.attention.data(), B, shared.o.data(), tid, team);
  barrier.wait();

  for (int64_t b = 0; b < B; ++b)
    add_norm_row(x.data() + b * d, shared.o.data() + b * d, w.cross_norm, d, step.eps, x.data() + b * d);
  const Share up_blocks = share(w.up.n / kRowBlock, tid, team);
  row_blocks(w.up, x.data(), d, B, up_blocks.first, up_blocks.last, shared.up.data());
  for (int64_t b = 0; b < B; ++b) {  // ReLU on this thread's columns
    float* row = shared.up.data() + b * step.ff;
    for (int64_t i = up_blocks.first * kRowBlock; i < up_blocks.last * kRowBlock; ++i) row[i] = std::max(row[i], 0.0f);
  }
  barrier.wait();

  product_share(w.down, shared.up.data(), B, shared.down.data(), tid, team);
  barrier.wait();

  for (int64_t b = 0; b < B; ++b)
    add_norm_row(x.data() + b * d, shared.down.data() + b * d, w.mlp_norm, d, step.eps, x.data() + b * d);
}

RowWeight row_weight(const at::Tensor& blocks, const at::Tensor& scales, const at::Tensor* bias, int64_t n,
                     int64_t k, const char* name) {
  TORCH_CHECK(blocks.scalar_type() == at::kChar && blocks.is_contiguous() && blocks.dim() == 3 &&
              blocks.size(0) * kRowBlock == n && blocks.size(1) == k && blocks.size(2) == kRowBlock,
              "decode_ssru: ", name, " must be a (", n / kRowBlock, ", ", k, ", 16) int8 tensor");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == n,
              "decode_ssru: ", name, "'s scales must be ", n, " float32 values");
  TORCH_CHECK(bias == nullptr || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n),
              "decode_ssru: ", name, "'s bias must be ", n, " float32 values");
  return {blocks.const_data_ptr<int8_t>(), scales.const_data_ptr<float>(),
          bias == nullptr ? nullptr : bias->const_data_ptr<float>(), n, k};
}

const float* vector_of(const at::Tensor& t, int64_t n, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n, "decode_ssru: ", name,
              " must be ", n, " float32 values");
  return t.const_data_ptr<float>();
}

// One block's tensors, in this order: the SSRU's blocks and scales and its forget bias; attn_norm's
// weight and bias; the query's blocks, scales and bias; the output's; cross_norm's weight and bias;
// the MLP's up and down products (blocks, scales, bias each); mlp_norm's weight and bias.
SsruBlock block_of(at::TensorList t, int64_t d, int64_t ff) {
  SsruBlock w;
  w.ssru = row_weight(t[0], t[1], nullptr, 2 * d, d, "the SSRU's product");
  w.forget_bias = vector_of(t[2], d, "the forget bias");
  w.attn_norm = {vector_of(t[3], d, "attn_norm"), vector_of(t[4], d, "attn_norm")};
  w.q = row_weight(t[5], t[6], &t[7], d, d, "the query product");
  w.o = row_weight(t[8], t[9], &t[10], d, d, "the output product");
  w.cross_norm = {vector_of(t[11], d, "cross_norm"), vector_of(t[12], d, "cross_norm")};
  w.up = row_weight(t[13], t[14], &t[15], ff, d, "the MLP's up product");
  w.down = row_weight(t[16], t[17], &t[18], d, ff, "the MLP's down product");
  w.mlp_norm = {vector_of(t[19], d, "mlp_norm"), vector_of(t[20], d, "mlp_norm")};
  return w;
}

// ids: (B, 1) int64, each row's new token, embedded as embed[id] * embed_scale + position_row (the
// sinusoids of the step's position, d float32: no row is padded, so all are at one position);
// `weights`: kTensorsPerBlock tensors per block (block_of); states and
// state_copies: each block's cache keys and values (B, H_kv, S, D) float32, one layout, the state
// written at `position` and read at position - 1; cross keys and values: each block's (B, H, S_src,
// D) float32, rows contiguous; source_mask (B, S_src) bool. Returns the last block's (B, 1, d) output.
at::Tensor decode_ssru(const at::Tensor& ids, const at::Tensor& embed, double embed_scale,
                       const at::Tensor& position_row, at::TensorList weights, at::TensorList states,
                       at::TensorList state_copies, at::TensorList cross_keys, at::TensorList cross_values,
                       const at::Tensor& source_mask, int64_t position, int64_t heads, double eps, double scale) {
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 2 && ids.size(1) == 1 && ids.is_contiguous(),
              "decode_ssru: ids must be (B, 1) int64");
  TORCH_CHECK(embed.scalar_type() == at::kFloat && embed.dim() == 2 && embed.is_contiguous(),
              "decode_ssru: the embedding table must be a contiguous float32 matrix");
  const int64_t B = ids.size(0), d = embed.size(1), vocab = embed.size(0);
  TORCH_CHECK(position_row.scalar_type() == at::kFloat && position_row.is_contiguous() && position_row.numel() == d,
              "decode_ssru: the position row must be ", d, " float32 values");
  const int64_t* id_values = ids.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(0 <= id_values[b] && id_values[b] < vocab, "decode_ssru: id ", id_values[b], " is not in the table");
  std::vector<float> input(B * d);
  const float *table = embed.const_data_ptr<float>(), *positions = position_row.const_data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)  // as embed_tokens rounds it: the scaled embedding, then the position added
    for (int64_t i = 0; i < d; ++i)
      input[b * d + i] = table[id_values[b] * d + i] * static_cast<float>(embed_scale) + positions[i];
  const size_t n = states.size();
  TORCH_CHECK(n > 0 && weights.size() == n * kTensorsPerBlock && state_copies.size() == n && cross_keys.size() == n &&
              cross_values.size() == n, "decode_ssru: every list must hold each block's tensors");
  const at::Tensor& first = states[0];
  TORCH_CHECK(first.scalar_type() == at::kFloat && first.dim() == 4 && first.size(0) == B && first.stride(3) == 1 &&
              first.size(1) * first.size(3) == d && 0 <= position && position < first.size(2),
              "decode_ssru: the cache must be float32 (B, H_kv, S, D) with d values a position, room at ", position);
  const at::Tensor& keys0 = cross_keys[0];
  TORCH_CHECK(keys0.dim() == 4 && keys0.size(0) == B && heads % keys0.size(1) == 0 &&
              heads / keys0.size(1) <= kMaxGroup, "decode_ssru: cross keys must be (B, H_kv, S, D)");
  const int64_t D = keys0.size(3), H_kv = keys0.size(1), S = keys0.size(2);
  TORCH_CHECK(D == 32 || D == 64 || D == 128, "decode_ssru: head size must be 32, 64 or 128, not ", D);
  TORCH_CHECK(heads * D == d, "decode_ssru: ", heads, " heads of ", D, " do not make ", d);
  TORCH_CHECK(source_mask.scalar_type() == at::kBool && source_mask.is_contiguous() && source_mask.dim() == 2 &&
              source_mask.size(0) == B && source_mask.size(1) == S, "decode_ssru: source_mask must be (B, S) bool");
  const int64_t ff = weights[13].size(0) * kRowBlock;
  std::vector<SsruBlock> blocks;
  for (size_t i = 0; i < n; ++i) {
    SsruBlock w = block_of(weights.slice(i * kTensorsPerBlock, kTensorsPerBlock), d, ff);
    for (const at::Tensor* t : {&states[i], &state_copies[i]})
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->sizes() == first.sizes() && t->strides() == first.strides(),
                  "decode_ssru: every block's cache tensors must be of one shape and layout");
    const at::Tensor &k = cross_keys[i], &v = cross_values[i];
    TORCH_CHECK(k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && k.sizes() == keys0.sizes() &&
                v.sizes() == k.sizes() && v.strides() == k.strides() && k.stride(3) == 1,
                "decode_ssru: every block's cross keys and values must be float32 (B, H_kv, S, D) of one layout");
    w.states = states[i].data_ptr<float>();
    w.state_copies = state_copies[i].data_ptr<float>();
    w.keys = k.const_data_ptr<float>();
    w.values = v.const_data_ptr<float>();
    for (int j = 0; j < 3; ++j) w.kv_strides[j] = k.stride(j);
    blocks.push_back(w);
  }
  at::Tensor out = at::empty({B, 1, d}, embed.options());
  const Step step{B, d, heads, H_kv, D, ff, S, position, {first.stride(0), first.stride(1), first.stride(2)},
                  source_mask.const_data_ptr<bool>(), static_cast<float>(eps), static_cast<float>(scale),
                  out.data_ptr<float>()};

  thread_local Shared calls_buffers;
  Shared& shared = calls_buffers;  // the caller's, named so: the lambda below would name each thread's own
  shared.ssru.resize(B * 2 * d);
  shared.q.resize(B * d);
  shared.attention.resize(B * d);
  shared.o.resize(B * d);
  shared.up.resize(B * ff);
  shared.down.resize(B * d);
  const int64_t group = heads / H_kv;
  shared.partial_sums.resize(B * heads * D);
  shared.partials.resize(B * H_kv * group);
  for (size_t i = 0; i < shared.partials.size(); ++i) shared.partials[i].sums = shared.partial_sums.data() + i * D;

  // a few rows' step is tens of microseconds of work on one thread, which a second one shortens less
  // than its fourteen barriers can cost where the cores are shared (a barrier waits for a thread
  // the system has not scheduled): the native engine also steps a sentence on one thread
  const int64_t threads = B >= kThreadedRows ? at::get_num_threads() : 1;
  on_team(threads, [&](SpinBarrier& meet, int tid, int team) {
    std::vector<float> stream(input);  // each thread's own copy of the residual stream
    for (const SsruBlock& w : blocks) {
      if (D == 32) run_block<2>(step, w, stream, shared, meet, tid, team);
      else if (D == 64) run_block<4>(step, w, stream, shared, meet, tid, team);
      else run_block<8>(step, w, stream, shared, meet, tid, team);
    }
    if (tid == 0) std::copy(stream.begin(), stream.end(), step.out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nexttoken, m) {
  m.def("decode_ssru(Tensor ids, Tensor embed, float embed_scale, Tensor position_row, Tensor[] weights, Tensor(a!)[] states, Tensor(b!)[] state_copies, "
        "Tensor[] cross_keys, Tensor[] cross_values, Tensor source_mask, int position, int heads, float eps, "
        "float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("decode_ssru", &decode_ssru);
}
