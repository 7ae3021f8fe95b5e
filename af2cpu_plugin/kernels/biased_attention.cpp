// Biased multi-head attention for AlphaFold's head sizes, tiled for AVX-512 and AVX2.
//
//   out[b, i, h, :] = softmax_j(q[b, h, i, :] . k[b, h, j, :] + bias[b, h, i, j]) @ v[b, h, :, :]
//
// Why a kernel of our own: AlphaFold's attention has a head size of 16 or 32
// (8 in the extra MSA stack: the AVX-512 fp32 path runs it as it is, with the
// upper lanes of each value vector zero; the others get it padded to 16)
// and a bias on every logit (triangle attention: [h, q, k] from the pair). At
// that head size PyTorch's CPU flash attention spends its time in per-tile
// GEMM calls and reaches about 100 GFLOP/s in bf16 on 2 Zen 5 cores (its GEMM
// peak is ~950). Here one task owns a (batch, head, query range), packs its
// keys and values once into the layout the dot-product instructions want, and
// keeps logits, softmax and the weighted sum for 8 query rows in registers and
// L1: no GEMM calls, no [b, h, q, k] tensor.
//
// With a gate (AlphaFold's gated attention: the output times sigmoid(gate),
// gate laid out like the output), the product is taken on the fp32 result
// before it is stored: one rounding instead of three, and no separate
// sigmoid and product passes over the [b, q, h, d] tensor.
//
// Numerics follow PyTorch's kernel: bf16 inputs, fp32 logits, fp32 softmax
// statistics (max and sum over the whole row: rows fit in cache, so no
// online rescaling), probabilities rounded to the input dtype for the second
// product, fp32 accumulation. fp32 inputs stay fp32 throughout.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "cpu_features.h"
#include "vec_math.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace af2cpu {
namespace {

// Three paths (cpu_features.h), picked at run time by biased_attention():
// AVX-512 bf16, AVX-512 fp32, AVX2 fp32.

constexpr int kRows = 8;  // query rows processed together (register blocking)

AF2CPU_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

AF2CPU_AVX512 inline __m512 load_bias(const at::BFloat16* p, __mmask16 m) { return load_bf16(p, m); }

AF2CPU_AVX512 inline __m512 load_bias(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

// Logits for R query rows and 16 * V keys starting at j, biased and stored
// to s (row stride nk16); keys past nk get -inf. row_max[r] keeps each row's
// running per-lane maximum. R and V are compile-time so that the
// accumulators never leave registers.
template <int R, int V, typename T>
AF2CPU_AVX512 inline void store_logits(const __m512 (&acc)[R][V], int64_t j, int64_t nk, int64_t nk16,
                                       const T* bias, int64_t bias_row, float* s, __m512 (&row_max)[R]) {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  if (j + 16 * V <= nk) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int u = 0; u < V; ++u) {
        const __m512 x = _mm512_add_ps(acc[r][u], load_bias(bias + r * bias_row + j + 16 * u, __mmask16(0xFFFF)));
        _mm512_storeu_ps(s + r * nk16 + j + 16 * u, x);
        row_max[r] = _mm512_max_ps(row_max[r], x);
      }
    return;
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < V; ++u) {
      const int64_t jj = j + 16 * u;
      const __mmask16 m = jj < nk ? tail_mask(nk - jj) : __mmask16(0);
      const __m512 x = _mm512_mask_add_ps(neg_inf, m, acc[r][u], load_bias(bias + r * bias_row + jj, m));
      _mm512_storeu_ps(s + r * nk16 + jj, x);
      row_max[r] = _mm512_max_ps(row_max[r], x);
    }
}

// Calls f.template rows<R>(i0) for each group of up to MaxRows query rows,
// with R a compile-time constant (the last group's size is dispatched by switch).
template <int MaxRows, typename F>
inline void for_row_groups(int64_t nq, F&& f) {
  static_assert(MaxRows == 6 || MaxRows == 8);
  int64_t i0 = 0;
  for (; i0 + MaxRows <= nq; i0 += MaxRows) f.template rows<MaxRows>(i0);
  switch (nq - i0) {
    case 7: if constexpr (MaxRows > 7) f.template rows<7>(i0); break;
    case 6: if constexpr (MaxRows > 6) f.template rows<6>(i0); break;
    case 5: f.template rows<5>(i0); break;
    case 4: f.template rows<4>(i0); break;
    case 3: f.template rows<3>(i0); break;
    case 2: f.template rows<2>(i0); break;
    case 1: f.template rows<1>(i0); break;
    default: break;
  }
}

// Per-thread scratch, reused across tasks.
struct Scratch {
  std::vector<uint32_t> keys, values;  // packed (bf16 pairs, or fp32 bits)
  std::vector<float> logits;           // kRows x nk16
  std::vector<uint16_t> weights;       // kRows x nk16, bf16
};

// One task: a (batch, head, query range). Pointers are at its first query row.
template <typename T>
struct TaskBase {
  const T* q; int64_t q_row;
  const T* bias; int64_t bias_row;
  T* out; int64_t out_row;
  const T* gate; int64_t gate_row;  // gate == nullptr: no gating
  int64_t nk, nk16;
  Scratch* sc;
  const T* v = nullptr; int64_t v_row = 0;  // values, where a path reads them in place
};

// The D floats of a row (D = 16 or 32: one or two cache lines), into L1.
template <int D>
inline void prefetch_row(const float* row) {
  _mm_prefetch(reinterpret_cast<const char*>(row), _MM_HINT_T0);
  if (D > 16) _mm_prefetch(reinterpret_cast<const char*>(row + D - 1), _MM_HINT_T0);
}

// Key and value rows [first, last), asked for while the packing transposes the rows before them: in the
// engine they are strided views of the fused projection (rows 2 KiB apart).
template <int D>
inline void prefetch_key_value_rows(const float* k, int64_t k_row, const float* v, int64_t v_row, int64_t first,
                                    int64_t last) {
  for (int64_t j = first; j < last; ++j) {
    prefetch_row<D>(k + j * k_row);
    prefetch_row<D>(v + j * v_row);
  }
}

// Where the packed keys keep channel c of key j: panels of Panel keys, each [Width][Panel] (Width channels,
// or bf16 channel pairs), so that one step of the first product reads a panel front to back.
template <int Panel, int Width>
inline int64_t panel_at(int c, int64_t j) {
  return j / Panel * (Panel * Width) + c * Panel + j % Panel;
}

// ---------------------------------------------------------------- bf16 ----
// Keys are packed in panels of 32 keys, [nk32/32][D/2][32][2] (as the fp32 path's, below), and values
// as [nk16/2][D][2]: each 32-bit lane holds the two bf16 numbers one vdpbf16ps step multiplies pairwise.

template <int D>
struct Bf16Task : TaskBase<at::BFloat16> {
  static constexpr int kMaxRows = kRows;
  static constexpr int kPairs = D / 2;
  static constexpr int kVecs = D / 16;  // output vectors per row
  using T = at::BFloat16;

  static constexpr int kPanel = 32;  // keys per key panel, as the fp32 path's: [nk32/32][D/2][32]

  AF2CPU_AVX512_BF16 void pack(const T* k, int64_t k_row, const T* v, int64_t v_row) {
    const int64_t padded = (nk + kPanel - 1) / kPanel * kPanel;  // whole panels
    sc->keys.resize(padded * kPairs);
    sc->values.assign(nk16 / 2 * D, 0u);
    int64_t j = 0;
    for (; j + 16 <= nk; j += 16) {  // 16 keys' channel pairs, transposed in registers (a pair is one lane)
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(__mmask16((1u << kPairs) - 1), k + (j + i) * k_row));
      transpose16(r);
      uint32_t* panel = sc->keys.data() + panel_at<kPanel, kPairs>(0, j);
      for (int c = 0; c < kPairs; ++c) _mm512_storeu_ps(reinterpret_cast<float*>(panel + c * kPanel), r[c]);
    }
    for (; j < padded; ++j) {  // the last few keys, and zeros up to the panel's end
      const uint32_t* kj = reinterpret_cast<const uint32_t*>(k + j * k_row);
      for (int c = 0; c < kPairs; ++c) sc->keys[panel_at<kPanel, kPairs>(c, j)] = j < nk ? kj[c] : 0u;
    }
    // Values: interleave rows j and j+1 lane by lane (a zero row pads odd nk).
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                        37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    const __mmask32 row_mask = D == 32 ? __mmask32(0xFFFFFFFF) : __mmask32(0xFFFF);
    for (int64_t j = 0; j < nk; j += 2) {
      const __m512i a = _mm512_maskz_loadu_epi16(row_mask, v + j * v_row);
      const __m512i b = j + 1 < nk ? _mm512_maskz_loadu_epi16(row_mask, v + (j + 1) * v_row) : _mm512_setzero_si512();
      _mm512_storeu_si512(&sc->values[j / 2 * D], _mm512_permutex2var_epi16(a, lo, b));
      if (D == 32) _mm512_storeu_si512(&sc->values[j / 2 * D + 16], _mm512_permutex2var_epi16(a, hi, b));
    }
    sc->logits.resize(kRows * nk16);
    sc->weights.resize(kRows * nk16);
  }

  template <int R>
  AF2CPU_AVX512_BF16 void rows(int64_t i0) {
    const uint32_t* keys = sc->keys.data();
    const uint32_t* values = sc->values.data();
    float* logits = sc->logits.data();
    uint16_t* weights = sc->weights.data();
    // Logits: R rows x 32 keys per step, accumulated over D/2 pairs.
    const uint32_t* qrow[R];
    for (int r = 0; r < R; ++r) qrow[r] = reinterpret_cast<const uint32_t*>(q + (i0 + r) * q_row);
    __m512 row_max[R];
    for (int r = 0; r < R; ++r) row_max[r] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    int64_t j = 0;
    for (; j + 32 <= nk16; j += 32) {
      const uint32_t* panel = keys + j * kPairs;
      __m512 acc[R][2];
      for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int c = 0; c < kPairs; ++c) {
        const __m512i k0 = _mm512_loadu_si512(panel + c * kPanel);
        const __m512i k1 = _mm512_loadu_si512(panel + c * kPanel + 16);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m512i qb = _mm512_set1_epi32(int(qrow[r][c]));
          acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)qb, (__m512bh)k0);
          acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)qb, (__m512bh)k1);
        }
      }
      store_logits<R, 2>(acc, j, nk, nk16, bias + i0 * bias_row, bias_row, logits, row_max);
    }
    if (j < nk16) {  // one vector of keys left: the first half of the last panel
      const uint32_t* panel = keys + j * kPairs;
      __m512 acc[R][1];
      for (int r = 0; r < R; ++r) acc[r][0] = _mm512_setzero_ps();
      for (int c = 0; c < kPairs; ++c) {
        const __m512i k0 = _mm512_loadu_si512(panel + c * kPanel);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)_mm512_set1_epi32(int(qrow[r][c])), (__m512bh)k0);
      }
      store_logits<R, 1>(acc, j, nk, nk16, bias + i0 * bias_row, bias_row, logits, row_max);
    }
    // Softmax weights, rounded to bf16 (zero past nk).
    float inv_sum[R];
    for (int r = 0; r < R; ++r) {
      const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(row_max[r]));
      const float* s = logits + r * nk16;
      uint16_t* p = weights + r * nk16;
      __m512 sum = _mm512_setzero_ps();
      for (int64_t jj = 0; jj < nk16; jj += 16) {
        const __m512 e = _mm512_maskz_mov_ps(tail_mask(nk - jj), exp_nonpositive<5>(_mm512_sub_ps(_mm512_loadu_ps(s + jj), m)));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + jj), (__m256i)_mm512_cvtneps_pbh(e));
      }
      inv_sum[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    // Weighted values: R rows x D per step of two keys.
    __m512 acc[R][kVecs];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < kVecs; ++u) acc[r][u] = _mm512_setzero_ps();
    const uint32_t* p32 = reinterpret_cast<const uint32_t*>(weights);
    for (int64_t jp = 0; jp < (nk + 1) / 2; ++jp) {
      __m512i vv[kVecs];
      for (int u = 0; u < kVecs; ++u) vv[u] = _mm512_loadu_si512(values + jp * D + u * 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512i pb = _mm512_set1_epi32(int(p32[r * nk16 / 2 + jp]));
        for (int u = 0; u < kVecs; ++u) acc[r][u] = _mm512_dpbf16_ps(acc[r][u], (__m512bh)pb, (__m512bh)vv[u]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 scale = _mm512_set1_ps(inv_sum[r]);
      for (int u = 0; u < kVecs; ++u) {
        __m512 o = _mm512_mul_ps(acc[r][u], scale);
        if (gate != nullptr) o = _mm512_mul_ps(o, sigmoid(load_bf16(gate + (i0 + r) * gate_row + u * 16)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (i0 + r) * out_row + u * 16), (__m256i)_mm512_cvtneps_pbh(o));
      }
    }
  }
};

// ---------------------------------------------------------------- fp32 ----
// Keys are packed into panels of 32 (the two vectors of one step), [nk32/32][D][32] with 16 x 16
// register transposes, and values into contiguous rows [nk][D]: each step of both products reads its
// operands front to back. The layout they replace, keys [D][nk16] and values read in place, had one
// step touch D key rows nk16 floats apart (2 KiB at 512 keys: MSA column attention), which L1 holds in
// only a few sets; and the values are strided views of the fused projection (rows 2 KiB apart). The
// sums are the same, in the same order: bit-identical outputs (head size 8 too, against the padded 16,
// whose extra products added zeros). On 2 Zen 5 cores (bench/attention.py, each build twice): 12-36% less
// time at every shape (triangle attention at 100 residues 2.7-3.3 -> 2.1-2.2 ms, MSA column attention over
// 512 clusters 17.0-17.5 -> 14.8-14.9 ms; the extra MSA's row attention, unpadded, 5.4-5.7 -> 3.5 ms); the
// bf16 path's panels, 0-8%.

// D channels of a row as one vector for D = 8 (the extra MSA's heads: the upper lanes zero), else 16 of them.
template <int D>
AF2CPU_AVX512 inline __m512 load_channels(const float* p) {
  static_assert(D == 8 || D % 16 == 0);
  if constexpr (D == 8) return _mm512_maskz_loadu_ps(__mmask16(0xFF), p);
  else return _mm512_loadu_ps(p);
}

template <int D>
AF2CPU_AVX512 inline void store_channels(float* p, __m512 x) {
  if constexpr (D == 8) _mm512_mask_storeu_ps(p, __mmask16(0xFF), x);
  else _mm512_storeu_ps(p, x);
}

template <int D>
struct Fp32Task : TaskBase<float> {
  static constexpr int kMaxRows = kRows;
  static constexpr int kVecs = (D + 15) / 16;  // vectors per row of values and outputs
  static constexpr int kPanel = 32;

  AF2CPU_AVX512 void pack(const float* k, int64_t k_row, const float* v_, int64_t v_row_) {
    const int64_t padded = (nk + kPanel - 1) / kPanel * kPanel;  // whole panels
    sc->keys.resize(padded * D);
    sc->values.resize(nk * D);
    sc->logits.resize(kMaxRows * nk16);
    float* keys = reinterpret_cast<float*>(sc->keys.data());
    int64_t j = 0;
    for (; j + 16 <= nk; j += 16) {
      prefetch_key_value_rows<D>(k, k_row, v_, v_row_, j + 16, std::min(j + 32, nk));
      float* panel = keys + panel_at<kPanel, D>(0, j);
      for (int c0 = 0; c0 < D; c0 += 16) {
        __m512 r[16];
        for (int i = 0; i < 16; ++i) r[i] = load_channels<D>(k + (j + i) * k_row + c0);
        transpose16(r);
        for (int c = 0; c < std::min(16, D); ++c) _mm512_storeu_ps(panel + (c0 + c) * kPanel, r[c]);
      }
    }
    for (; j < padded; ++j)  // the last few keys, and zeros up to the panel's end
      for (int c = 0; c < D; ++c) keys[panel_at<kPanel, D>(c, j)] = j < nk ? k[j * k_row + c] : 0.0f;
    float* values = reinterpret_cast<float*>(sc->values.data());
    for (int64_t jj = 0; jj < nk; ++jj)
      for (int u = 0; u < kVecs; ++u) store_channels<D>(values + jj * D + 16 * u, load_channels<D>(v_ + jj * v_row_ + 16 * u));
    v = values;
    v_row = D;
  }

  template <int R>
  AF2CPU_AVX512 void rows(int64_t i0) {
    const float* keys = reinterpret_cast<const float*>(sc->keys.data());
    float* logits = sc->logits.data();
    const float* qrow[R];
    for (int r = 0; r < R; ++r) qrow[r] = q + (i0 + r) * q_row;
    for (int r = 0; r < R; ++r) {  // rows read and written last, and the next group's queries (as the AVX2 path)
      if (gate != nullptr) prefetch_row<D>(gate + (i0 + r) * gate_row);
      prefetch_row<D>(out + (i0 + r) * out_row);
      prefetch_row<D>(q + (i0 + R + r) * q_row);
    }
    __m512 row_max[R];
    for (int r = 0; r < R; ++r) row_max[r] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    int64_t j = 0;
    for (; j + 32 <= nk16; j += 32) {
      const float* panel = keys + j * D;
      __m512 acc[R][2];
      for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int c = 0; c < D; ++c) {
        const __m512 k0 = _mm512_loadu_ps(panel + c * kPanel);
        const __m512 k1 = _mm512_loadu_ps(panel + c * kPanel + 16);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m512 qb = _mm512_set1_ps(qrow[r][c]);
          acc[r][0] = _mm512_fmadd_ps(qb, k0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(qb, k1, acc[r][1]);
        }
      }
      store_logits<R, 2>(acc, j, nk, nk16, bias + i0 * bias_row, bias_row, logits, row_max);
    }
    if (j < nk16) {  // 16 keys left: the first half of the last panel
      const float* panel = keys + j * D;
      __m512 acc[R][1];
      for (int r = 0; r < R; ++r) acc[r][0] = _mm512_setzero_ps();
      for (int c = 0; c < D; ++c) {
        const __m512 k0 = _mm512_loadu_ps(panel + c * kPanel);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][0] = _mm512_fmadd_ps(_mm512_set1_ps(qrow[r][c]), k0, acc[r][0]);
      }
      store_logits<R, 1>(acc, j, nk, nk16, bias + i0 * bias_row, bias_row, logits, row_max);
    }
    float inv_sum[R];
    for (int r = 0; r < R; ++r) {
      const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(row_max[r]));
      float* s = logits + r * nk16;
      __m512 sum = _mm512_setzero_ps();
      for (int64_t jj = 0; jj < nk16; jj += 16) {
        const __m512 e = _mm512_maskz_mov_ps(tail_mask(nk - jj), exp_nonpositive<7>(_mm512_sub_ps(_mm512_loadu_ps(s + jj), m)));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(s + jj, e);
      }
      inv_sum[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    __m512 acc[R][kVecs];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < kVecs; ++u) acc[r][u] = _mm512_setzero_ps();
    for (int64_t jj = 0; jj < nk; ++jj) {
      __m512 vv[kVecs];
      for (int u = 0; u < kVecs; ++u) vv[u] = load_channels<D>(v + jj * v_row + u * 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 pb = _mm512_set1_ps(logits[r * nk16 + jj]);
        for (int u = 0; u < kVecs; ++u) acc[r][u] = _mm512_fmadd_ps(pb, vv[u], acc[r][u]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 scale = _mm512_set1_ps(inv_sum[r]);
      for (int u = 0; u < kVecs; ++u) {
        __m512 o = _mm512_mul_ps(acc[r][u], scale);
        if (gate != nullptr) o = _mm512_mul_ps(o, sigmoid(load_channels<D>(gate + (i0 + r) * gate_row + u * 16)));
        store_channels<D>(out + (i0 + r) * out_row + u * 16, o);
      }
    }
  }
};

// --------------------------------------------------------- fp32, AVX2 ----
// For CPUs without AVX-512 (AMD Zen 3 and older, many Intel client parts):
// 8 lanes and 16 vector registers. Both products use the 6 x 16 register
// tile of the classic AVX2 GEMM micro-kernel (6 query rows x 2 vectors: 12
// accumulators, 2 loads and 6 broadcasts per step), which hides the FMA
// latency that a 4-row tile (8 accumulators) barely covered. Keys and values
// are packed once per task, with 8 x 8 register transposes, into panels of
// 16 read front to back (keys [nk16/16][D][16], values [D/16][nk][16]),
// where the layout the AVX-512 paths also had then ([D][nk16], packed a float
// at a time) has each step touch 32 rows 832 bytes apart. The sums are the same, in the
// same order, as that 4-row version's: bit-identical outputs, 1.45-1.7x its
// speed on a Zen 3 core, 1.1-2.0x SDPA on 2 (bench/attention.py).

AF2CPU_AVX2 inline float hmax_avx2(__m256 x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Rows src[0..8) x 8 floats (row stride src_row) written as columns: dst[c * dst_row + j] = src[j * src_row + c].
AF2CPU_AVX2 inline void transpose_8x8(const float* src, int64_t src_row, float* dst, int64_t dst_row) {
  __m256 r[8];
  for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + j * src_row);
  transpose8(r);
  for (int c = 0; c < 8; ++c) _mm256_storeu_ps(dst + c * dst_row, r[c]);
}

template <int D>
struct Avx2Task : TaskBase<float> {
  static constexpr int kMaxRows = 6;
  static constexpr int kPanel = 16;  // keys per key panel, channels per value panel

  AF2CPU_AVX2 void pack(const float* k, int64_t k_row, const float* v_, int64_t v_row_) {
    sc->keys.resize(nk16 * D);
    sc->values.resize(nk * D);
    sc->logits.resize(kMaxRows * nk16);
    float* keys = reinterpret_cast<float*>(sc->keys.data());
    int64_t j = 0;
    for (; j + 8 <= nk; j += 8) {
      // The next 8 rows: 2-4% of the kernel at 100-200 residues on a Zen 3 (gated, engine layout; A/B
      // interleaved in one process).
      prefetch_key_value_rows<D>(k, k_row, v_, v_row_, j + 8, std::min(j + 16, nk));
      for (int c0 = 0; c0 < D; c0 += 8) transpose_8x8(k + j * k_row + c0, k_row, keys + panel_at<kPanel, D>(c0, j), kPanel);
    }
    for (; j < nk16; ++j)  // the last few keys, and zeros up to the panel's end
      for (int c = 0; c < D; ++c) keys[panel_at<kPanel, D>(c, j)] = j < nk ? k[j * k_row + c] : 0.0f;
    float* values = reinterpret_cast<float*>(sc->values.data());
    for (int h0 = 0; h0 < D; h0 += kPanel)
      for (int64_t jj = 0; jj < nk; ++jj) {
        _mm256_storeu_ps(values + h0 * nk + jj * kPanel, _mm256_loadu_ps(v_ + jj * v_row_ + h0));
        _mm256_storeu_ps(values + h0 * nk + jj * kPanel + 8, _mm256_loadu_ps(v_ + jj * v_row_ + h0 + 8));
      }
  }

  template <int R>
  AF2CPU_AVX2 void rows(int64_t i0) {
    const float* keys = reinterpret_cast<const float*>(sc->keys.data());
    const float* values = reinterpret_cast<const float*>(sc->values.data());
    float* logits = sc->logits.data();
    const float* qrow[R];
    for (int r = 0; r < R; ++r) qrow[r] = q + (i0 + r) * q_row;
    const float* brow = bias + i0 * bias_row;
    // The rows this group reads and writes last (gate, output) and the next group's query rows, asked
    // for now so that they arrive while the products run rather than stall them: in the engine they are
    // strided views of the fused projection (rows 2 KiB apart, 128 bytes used each). On a Zen 3 this
    // took 9-15% off the kernel's time at the engine's triangle-attention shapes (100 and 200 residues,
    // gated; A/B interleaved in one process). Fetching the next task's key and value rows instead
    // showed nothing measurable (separate processes, on a noisy VM).
    for (int r = 0; r < R; ++r) {
      if (gate != nullptr) prefetch_row<D>(gate + (i0 + r) * gate_row);
      prefetch_row<D>(out + (i0 + r) * out_row);
      prefetch_row<D>(q + (i0 + R + r) * q_row);  // past the task's last row too: a prefetch never faults
    }
    const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    __m256 row_max[R];
    for (int r = 0; r < R; ++r) row_max[r] = neg_inf;
    for (int64_t j = 0; j < nk16; j += kPanel) {
      const float* panel = keys + j * D;
      __m256 acc[R][2];
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      if (j + 8 < nk) {
        for (int c = 0; c < D; ++c) {
          const __m256 k0 = _mm256_loadu_ps(panel + c * kPanel);
          const __m256 k1 = _mm256_loadu_ps(panel + c * kPanel + 8);
#pragma GCC unroll 6
          for (int r = 0; r < R; ++r) {
            const __m256 qb = _mm256_broadcast_ss(qrow[r] + c);
            acc[r][0] = _mm256_fmadd_ps(qb, k0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(qb, k1, acc[r][1]);
          }
        }
      } else {  // no key in the panel's second half (its logits are -inf below): half the products (at 100
                // keys, 1 in 14 of the first product's; 3% of the kernel on one Zen 3 core, outputs unchanged)
        for (int c = 0; c < D; ++c) {
          const __m256 k0 = _mm256_loadu_ps(panel + c * kPanel);
#pragma GCC unroll 6
          for (int r = 0; r < R; ++r) acc[r][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(qrow[r] + c), k0, acc[r][0]);
        }
      }
      // Every loop over r and u is unrolled: an accumulator indexed at run
      // time would keep the whole tile in memory (GCC then stored all 12
      // accumulators to the stack on every step of the loop above).
#pragma GCC unroll 2
      for (int u = 0; u < 2; ++u) {
        const int64_t jj = j + 8 * u;
        if (jj + 8 <= nk) {
#pragma GCC unroll 6
          for (int r = 0; r < R; ++r) {
            const __m256 x = _mm256_add_ps(acc[r][u], _mm256_loadu_ps(brow + r * bias_row + jj));
            _mm256_storeu_ps(logits + r * nk16 + jj, x);
            row_max[r] = _mm256_max_ps(row_max[r], x);
          }
        } else {
          const __m256i m = lanes_below(nk - jj);
#pragma GCC unroll 6
          for (int r = 0; r < R; ++r) {
            const __m256 b = jj < nk ? _mm256_maskload_ps(brow + r * bias_row + jj, m) : _mm256_setzero_ps();
            const __m256 x = _mm256_blendv_ps(neg_inf, _mm256_add_ps(acc[r][u], b), _mm256_castsi256_ps(m));
            _mm256_storeu_ps(logits + r * nk16 + jj, x);
            row_max[r] = _mm256_max_ps(row_max[r], x);
          }
        }
      }
    }
    float inv_sum[R];
    for (int r = 0; r < R; ++r) {
      const __m256 m = _mm256_set1_ps(hmax_avx2(row_max[r]));
      float* s = logits + r * nk16;
      __m256 sum = _mm256_setzero_ps();
      for (int64_t jj = 0; jj < nk16; jj += 8) {
        __m256 e = exp_nonpositive_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + jj), m));
        if (jj + 8 > nk) e = _mm256_and_ps(e, _mm256_castsi256_ps(lanes_below(nk - jj)));
        sum = _mm256_add_ps(sum, e);
        _mm256_storeu_ps(s + jj, e);
      }
      inv_sum[r] = 1.0f / hsum_avx2(sum);
    }
    for (int h0 = 0; h0 < D; h0 += kPanel) {
      const float* panel = values + h0 * nk;
      __m256 acc[R][2];
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      for (int64_t jj = 0; jj < nk; ++jj) {
        const __m256 v0 = _mm256_loadu_ps(panel + jj * kPanel);
        const __m256 v1 = _mm256_loadu_ps(panel + jj * kPanel + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; ++r) {
          const __m256 pb = _mm256_broadcast_ss(logits + r * nk16 + jj);
          acc[r][0] = _mm256_fmadd_ps(pb, v0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(pb, v1, acc[r][1]);
        }
      }
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        const __m256 scale = _mm256_set1_ps(inv_sum[r]);
        __m256 o0 = _mm256_mul_ps(acc[r][0], scale), o1 = _mm256_mul_ps(acc[r][1], scale);
        if (gate != nullptr) {
          o0 = _mm256_mul_ps(o0, sigmoid_avx2(_mm256_loadu_ps(gate + (i0 + r) * gate_row + h0)));
          o1 = _mm256_mul_ps(o1, sigmoid_avx2(_mm256_loadu_ps(gate + (i0 + r) * gate_row + h0 + 8)));
        }
        _mm256_storeu_ps(out + (i0 + r) * out_row + h0, o0);
        _mm256_storeu_ps(out + (i0 + r) * out_row + h0 + 8, o1);
      }
    }
  }
};

// ------------------------------------------------------------- dispatch ----

template <typename Task, typename T>
void run_all(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
             const c10::optional<at::Tensor>& gate, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), nq = q.size(2), nk = k.size(2);
  const int64_t threads = at::get_num_threads();
  constexpr int kGroup = Task::kMaxRows;
  // Tasks are (batch, head, query range); split queries only when batch x head
  // alone would leave threads idle (keys are packed once per task).
  const int64_t want = 4 * threads;
  int64_t splits = B * H >= want ? 1 : (want + B * H - 1) / (B * H);
  int64_t chunk = (nq + splits - 1) / splits;
  chunk = std::max<int64_t>(kGroup, (chunk + kGroup - 1) / kGroup * kGroup);
  splits = (nq + chunk - 1) / chunk;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* bp = bias.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const T* gp = gate ? gate->data_ptr<T>() : nullptr;
  at::parallel_for(0, B * H * splits, 1, [&](int64_t begin, int64_t end) {
    Scratch sc;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (H * splits), h = (t / splits) % H, i0 = (t % splits) * chunk;
      const int64_t n = std::min(chunk, nq - i0);
      Task task;
      static_cast<TaskBase<T>&>(task) = {qp + b * q.stride(0) + h * q.stride(1) + i0 * q.stride(2), q.stride(2),
                                          bp + b * bias.stride(0) + h * bias.stride(1) + i0 * bias.stride(2), bias.stride(2),
                                          op + b * out.stride(0) + h * out.stride(1) + i0 * out.stride(2), out.stride(2),
                                          gp ? gp + b * gate->stride(0) + h * gate->stride(1) + i0 * gate->stride(2) : nullptr,
                                          gp ? gate->stride(2) : 0,
                                          nk, (nk + 15) / 16 * 16, &sc};
      task.pack(kp + b * k.stride(0) + h * k.stride(1), k.stride(2), vp + b * v.stride(0) + h * v.stride(1), v.stride(2));
      for_row_groups<kGroup>(n, task);
    }
  });
}

template <int D>
void run_for_head_size(bool bf16, bool avx512, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& bias, const c10::optional<at::Tensor>& gate, at::Tensor& out) {
  if (bf16) {
    run_all<Bf16Task<D>, at::BFloat16>(q, k, v, bias, gate, out);
  } else if (avx512) {
    run_all<Fp32Task<D>, float>(q, k, v, bias, gate, out);
  } else {
    run_all<Avx2Task<D>, float>(q, k, v, bias, gate, out);
  }
}

// q, k, v [B, H, L, D] with unit stride along D (views of a projection are
// fine); bias [B|1, H|1, Lq|1, Lk] in q's dtype, unit stride along Lk, any
// other strides (expanded broadcasts cost nothing). Returns [B, H, Lq, D]
// whose memory is [B, Lq, H, D], as PyTorch's kernel returns it. With a
// gate [B, H, Lq, D] (q's dtype, unit stride along D), that times sigmoid(gate).
at::Tensor biased_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                            const c10::optional<at::Tensor>& gate) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && bias.dim() == 4, "q, k, v, bias must be 4-D");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() &&
                  q.scalar_type() == bias.scalar_type(), "q, k, v and bias must share a dtype");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1 && bias.stride(3) == 1,
              "q, k, v and bias need unit stride in the last dimension");
  const int64_t B = q.size(0), H = q.size(1), nq = q.size(2), D = q.size(3), nk = k.size(2);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && k.size(1) == H && v.size(1) == H && v.size(2) == nk &&
                  k.size(3) == D && v.size(3) == D, "q, k, v shapes disagree");
  TORCH_CHECK(nk > 0, "no keys");
  if (gate) {
    TORCH_CHECK(gate->scalar_type() == q.scalar_type() && gate->dim() == 4 && gate->stride(3) == 1,
                "gate must be 4-D in q's dtype with unit stride in the last dimension");
    TORCH_CHECK(gate->size(0) == B && gate->size(1) == H && gate->size(2) == nq && gate->size(3) == D,
                "gate must be shaped like the output");
  }
  const at::Tensor b = bias.expand({B, H, nq, nk});
  at::Tensor out = at::empty({B, nq, H, D}, q.options()).transpose(1, 2);
  if (nq == 0) return out;
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || q.scalar_type() == at::kFloat, "dtype must be float32 or bfloat16");
  const bool avx512 = has_avx512() && !force_avx2();
  TORCH_CHECK(bf16 ? has_avx512_bf16() : (avx512 || has_avx2()), "this CPU lacks the vector instructions the ",
              bf16 ? "bf16 kernel needs (AVX-512 with avx512_bf16)" : "fp32 kernel needs (AVX2 and FMA)");
  TORCH_CHECK(D == 32 || D == 16 || (D == 8 && !bf16 && avx512), "head size ", D,
              " not supported (16 or 32; 8 on the AVX-512 fp32 path)");
  if (D == 32) {
    run_for_head_size<32>(bf16, avx512, q, k, v, b, gate, out);
  } else if (D == 8) {
    run_all<Fp32Task<8>, float>(q, k, v, b, gate, out);
  } else {
    run_for_head_size<16>(bf16, avx512, q, k, v, b, gate, out);
  }
  return out;
}

}  // namespace
}  // namespace af2cpu

TORCH_LIBRARY(af2cpu, m) { m.def("biased_attention(Tensor q, Tensor k, Tensor v, Tensor bias, Tensor? gate=None) -> Tensor"); }
TORCH_LIBRARY_IMPL(af2cpu, CPU, m) { m.impl("biased_attention", &af2cpu::biased_attention); }
