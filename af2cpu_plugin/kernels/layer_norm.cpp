// LayerNorm of fp32 or bf16 rows written straight to bf16, for the bf16 trunk
// (and, at the end, the fp32 trunk's strided and channel-major LayerNorms).
//
// In bf16 the engine keeps its MSA streams in fp32 and its pair in bf16, and
// hands the GEMMs bf16: every LayerNorm there reads one of the two and must
// write bf16. PyTorch does the fp32 case as two passes over a pair-sized
// tensor (layer_norm in fp32, then a cast), with an fp32 temporary in between;
// at 400 residues the pair is 82 MB in fp32, and the pair stack runs seven of
// these per block. Here one pass reads each row once, keeps fp32 statistics
// (mean, then the centred variance, as haiku computes them) and rounds the
// scaled result to bf16 (round to nearest even, as the cast does).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "cpu_features.h"
#include "vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace af2cpu {
namespace {

// Rows r in [begin, end) of a [n0, n1, C] view with strides (s0, s1, 1), written
// to a contiguous [n0 * n1, C] y: a transposed view (the triangle attention
// around the ending node works on pair.transpose(0, 1)) is normalised without
// first making it contiguous, an fp32 copy of the whole pair.
template <typename T>
AF2CPU_AVX512_BF16 void normalize_rows(const T* x, int64_t s0, int64_t s1, int64_t n1, const float* w,
                                       const float* b, at::BFloat16* y, int64_t begin, int64_t end, int64_t c,
                                       float eps) {
  const float inv_c = 1.0f / float(c);
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + (r / n1) * s0 + (r % n1) * s1;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < c; j += 16) sum = _mm512_add_ps(sum, load16(xr + j));
    const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) * inv_c);
    __m512 sq = _mm512_setzero_ps();
    for (int64_t j = 0; j < c; j += 16) {
      const __m512 d = _mm512_sub_ps(load16(xr + j), mean);
      sq = _mm512_fmadd_ps(d, d, sq);
    }
    const __m512 rstd = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(sq) * inv_c + eps));
    for (int64_t j = 0; j < c; j += 16) {
      const __m512 d = _mm512_mul_ps(_mm512_sub_ps(load16(xr + j), mean), rstd);
      const __m512 out = _mm512_fmadd_ps(d, _mm512_loadu_ps(w + j), _mm512_loadu_ps(b + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + r * c + j), (__m256i)_mm512_cvtneps_pbh(out));
    }
  }
}

// x [..., C] fp32 or bf16: contiguous, or 3-D with unit stride along C (any
// strides before it); weight, bias [C] fp32; C a multiple of 16. Returns
// LayerNorm(x) in bf16, same shape, contiguous.
at::Tensor layer_norm_to_bf16(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  TORCH_CHECK(has_avx512_bf16(), "layer_norm_to_bf16 needs AVX-512 with avx512_bf16");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16,
              "x must be float32 or bfloat16");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat,
              "weight and bias must be float32");
  TORCH_CHECK(weight.is_contiguous() && bias.is_contiguous(), "weight and bias must be contiguous");
  const bool strided = x_in.dim() == 3 && x_in.stride(2) == 1;
  const at::Tensor x = strided ? x_in : x_in.contiguous();
  const int64_t c = x.size(-1);
  TORCH_CHECK(c % 16 == 0 && weight.numel() == c && bias.numel() == c, "channels must be a multiple of 16");
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const int64_t rows = c == 0 ? 0 : x.numel() / c;
  if (rows == 0) return y;
  // Contiguous input is one run of rows: n1 = rows, s1 = C.
  const int64_t n1 = strided ? x.size(1) : rows;
  const int64_t s0 = strided ? x.stride(0) : 0;
  const int64_t s1 = strided ? x.stride(1) : c;
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    if (x.scalar_type() == at::kFloat) {
      normalize_rows(x.data_ptr<float>(), s0, s1, n1, wp, bp, yp, begin, end, c, float(eps));
    } else {
      normalize_rows(x.data_ptr<at::BFloat16>(), s0, s1, n1, wp, bp, yp, begin, end, c, float(eps));
    }
  });
  return y;
}

// ------------------------------------------------ channel-major input ----
// The triangle multiplication's products come out channel-major, [C, P] (one
// GEMM per channel), and its centre LayerNorm normalises over C for each of
// the P = N*N positions, writing [P, C] for the output projection. PyTorch
// needs the permuted copy first, then the LayerNorm (at 400 residues in bf16,
// 2.1 s a pass). Here 16 positions are one vector: the statistics read the
// channel rows in place (mean, then the centred variance, fp32), and each
// 16 x 16 block of normalised values is transposed in registers and written
// position-major, in bf16. (Copying each 64-position tile of the channel rows
// to a contiguous buffer first, against L1 set aliasing of rows 2P bytes
// apart, was slower: 14.4-15.3 against 12.3 ms at 400 residues.)

AF2CPU_AVX512_BF16 void normalize_columns(const at::BFloat16* x, int64_t p_total, int64_t c, const float* w,
                                          const float* b, at::BFloat16* y, int64_t p0, int64_t p1, float eps) {
  const float inv_c = 1.0f / float(c);
  for (; p0 < p1; p0 += 16) {
    const int64_t n = std::min<int64_t>(16, p1 - p0);
    const __mmask16 m = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    const at::BFloat16* col = x + p0;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t k = 0; k < c; ++k) sum = _mm512_add_ps(sum, load_bf16(col + k * p_total, m));
    const __m512 mean = _mm512_mul_ps(sum, _mm512_set1_ps(inv_c));
    __m512 sq = _mm512_setzero_ps();
    for (int64_t k = 0; k < c; ++k) {
      const __m512 d = _mm512_sub_ps(load_bf16(col + k * p_total, m), mean);
      sq = _mm512_fmadd_ps(d, d, sq);
    }
    const __m512 var = _mm512_mul_ps(sq, _mm512_set1_ps(inv_c));
    const __m512 rstd = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_sqrt_ps(_mm512_add_ps(var, _mm512_set1_ps(eps))));
    for (int64_t k0 = 0; k0 < c; k0 += 16) {
      __m512 r[16];
      for (int k = 0; k < 16; ++k) {
        const __m512 d = _mm512_mul_ps(_mm512_sub_ps(load_bf16(col + (k0 + k) * p_total, m), mean), rstd);
        r[k] = _mm512_fmadd_ps(d, _mm512_set1_ps(w[k0 + k]), _mm512_set1_ps(b[k0 + k]));
      }
      transpose16(r);  // r[i]: position p0 + i, channels k0..k0+15
      for (int64_t i = 0; i < n; ++i)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + (p0 + i) * c + k0), (__m256i)_mm512_cvtneps_pbh(r[i]));
    }
  }
}

// x [C, P] bf16, contiguous; weight, bias [C] fp32; C a multiple of 16.
// Returns LayerNorm over C of each position, [P, C] in bf16: x.t() normalised, without the transposed copy.
at::Tensor layer_norm_channel_major_to_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                            double eps) {
  TORCH_CHECK(has_avx512_bf16(), "layer_norm_channel_major_to_bf16 needs AVX-512 with avx512_bf16");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(), "x must be [C, P] bf16, contiguous");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat && weight.is_contiguous() &&
                  bias.is_contiguous(), "weight and bias must be float32, contiguous");
  const int64_t c = x.size(0), p = x.size(1);
  TORCH_CHECK(c % 16 == 0 && weight.numel() == c && bias.numel() == c, "channels must be a multiple of 16");
  at::Tensor y = at::empty({p, c}, x.options());
  const at::BFloat16* xp = x.data_ptr<at::BFloat16>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  // 16 positions per vector; 64 vectors a grain.
  at::parallel_for(0, (p + 15) / 16, 64, [&](int64_t begin, int64_t end) {
    normalize_columns(xp, p, c, wp, bp, yp, begin * 16, std::min(end * 16, p), float(eps));
  });
  return y;
}

// ---------------------------------------------------------------- fp32 ----
// The fp32 trunk's LayerNorms, AVX2 (every CPU the kernels run on; the pass is
// memory-bound). PyTorch's layer_norm needs contiguous input, so a transposed
// pair view (triangle attention around the ending node) and the triangle
// multiplication's channel-major products were first copied: at 100 residues
// on a Zen 3 those copies were 0.24 s of a 9.5 s pass. Statistics as above:
// the mean, then the centred variance, in fp32.

// Rows in fours: a row alone is bound by the latency of its chains of c/8
// dependent adds (its sum, then its squares); four rows side by side run four
// independent chains. Each row still sums in its own order, so the result is
// the one-row loop's to the bit (1.4-1.8x faster at 100 residues on a Zen 3).
constexpr int kRowsAtOnce = 4;

// Rows r0 .. r0 + n (n <= kRowsAtOnce) of a [n0, n1, C] view with strides (s0, s1, 1): where each starts,
// its mean and its 1 / sqrt(variance + eps), broadcast.
struct RowStats {
  int n;
  const float* x[kRowsAtOnce];
  __m256 mean[kRowsAtOnce], rstd[kRowsAtOnce];

  AF2CPU_AVX2 RowStats(const float* x0, int64_t s0, int64_t s1, int64_t n1, int64_t r0, int64_t end, int64_t c,
                       float eps) {
    constexpr int R = kRowsAtOnce;
    const float inv_c = 1.0f / float(c);
    n = int(std::min<int64_t>(R, end - r0));
    for (int i = 0; i < R; ++i) {
      const int64_t r = r0 + std::min(i, n - 1);  // past the last row: the last row again, not written
      x[i] = x0 + (r / n1) * s0 + (r % n1) * s1;
    }
    __m256 sum[R], sq[R];
    for (int i = 0; i < R; ++i) sum[i] = sq[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < c; j += 8)
      for (int i = 0; i < R; ++i) sum[i] = _mm256_add_ps(sum[i], _mm256_loadu_ps(x[i] + j));
    for (int i = 0; i < R; ++i) mean[i] = _mm256_set1_ps(hsum_avx2(sum[i]) * inv_c);
    for (int64_t j = 0; j < c; j += 8)
      for (int i = 0; i < R; ++i) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x[i] + j), mean[i]);
        sq[i] = _mm256_fmadd_ps(d, d, sq[i]);
      }
    for (int i = 0; i < R; ++i) rstd[i] = _mm256_set1_ps(1.0f / std::sqrt(hsum_avx2(sq[i]) * inv_c + eps));
  }

  // Channels j .. j + 8 of row i, normalised, scaled by w and offset by b.
  AF2CPU_AVX2 __m256 normalized(int i, int64_t j, const float* w, const float* b) const {
    const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x[i] + j), mean[i]), rstd[i]);
    return _mm256_fmadd_ps(d, _mm256_loadu_ps(w + j), _mm256_loadu_ps(b + j));
  }
};

AF2CPU_AVX2 void normalize_rows_fp32(const float* x, int64_t s0, int64_t s1, int64_t n1, const float* w,
                                     const float* b, float* y, int64_t begin, int64_t end, int64_t c, float eps) {
  for (int64_t r0 = begin; r0 < end; r0 += kRowsAtOnce) {
    const RowStats rows(x, s0, s1, n1, r0, end, c, eps);
    for (int i = 0; i < rows.n; ++i)
      for (int64_t j = 0; j < c; j += 8) _mm256_storeu_ps(y + (r0 + i) * c + j, rows.normalized(i, j, w, b));
  }
}

// x [..., C] fp32: contiguous, or 3-D with unit stride along C (any strides
// before it); weight, bias [C] fp32; C a multiple of 8. LayerNorm(x), contiguous.
// The checked input of the fp32 row kernels: x [..., C], read in place when 3-D with unit stride along C
// (otherwise made contiguous: one run of rows, n1 = rows and s1 = C); weight, bias [C]; C a multiple of 8.
struct Fp32Rows {
  at::Tensor x;
  int64_t c, rows, n1, s0, s1;

  Fp32Rows(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias, const char* op) {
    TORCH_CHECK(has_avx2(), op, " needs AVX2 and FMA");
    TORCH_CHECK(x_in.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
                    bias.scalar_type() == at::kFloat, "x, weight and bias must be float32");
    TORCH_CHECK(weight.is_contiguous() && bias.is_contiguous(), "weight and bias must be contiguous");
    const bool strided = x_in.dim() == 3 && x_in.stride(2) == 1;
    x = strided ? x_in : x_in.contiguous();
    c = x.size(-1);
    TORCH_CHECK(c % 8 == 0 && weight.numel() == c && bias.numel() == c, "channels must be a multiple of 8");
    rows = c == 0 ? 0 : x.numel() / c;
    n1 = strided ? x.size(1) : rows;
    s0 = strided ? x.stride(0) : 0;
    s1 = strided ? x.stride(1) : c;
  }
};

at::Tensor layer_norm_fp32(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const Fp32Rows in(x_in, weight, bias, "layer_norm_fp32");
  at::Tensor y = at::empty(in.x.sizes(), in.x.options());
  if (in.rows == 0) return y;
  const float* xp = in.x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, in.rows, 256, [&](int64_t begin, int64_t end) {
    normalize_rows_fp32(xp, in.s0, in.s1, in.n1, wp, bp, yp, begin, end, in.c, float(eps));
  });
  return y;
}

// ----------------------------------------- LayerNorm, then a few outputs ----
// The per-head attention bias the pair gives triangle attention (4 heads) and
// MSA row attention (8): bias[h, r] = sum_c LayerNorm(x)[r, c] * proj[h, c]
// for every row r of the pair. As a LayerNorm and then a GEMM, that wrote the
// normalised pair (a pair-sized temporary) and ran oneDNN with 4 or 8
// outputs, at ~10 GFLOP/s on a Zen 3: 0.16 s of a 100-residue pass, plus the
// LayerNorm. Here each row is normalised in registers (the statistics and
// normalised values of normalize_rows_fp32, to the bit; rows in fours) and
// projected at once; only the [H, rows] result is written.

// The lane sums of a, b, c, d: {sum(a), sum(b), sum(c), sum(d)}.
AF2CPU_AVX2 inline __m128 hsum4_avx2(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

template <int H>
AF2CPU_AVX2 void normalize_project_rows_fp32(const float* x, int64_t s0, int64_t s1, int64_t n1, const float* w,
                                             const float* b, const float* proj, float* out, int64_t ldo,
                                             int64_t begin, int64_t end, int64_t c, float eps) {
  static_assert(H == 4 || H == 8);
  for (int64_t r0 = begin; r0 < end; r0 += kRowsAtOnce) {
    const RowStats rows(x, s0, s1, n1, r0, end, c, eps);
    for (int i = 0; i < rows.n; ++i) {
      __m256 acc[H];
#pragma GCC unroll 8
      for (int h = 0; h < H; ++h) acc[h] = _mm256_setzero_ps();
      for (int64_t j = 0; j < c; j += 8) {
        const __m256 y = rows.normalized(i, j, w, b);
#pragma GCC unroll 8
        for (int h = 0; h < H; ++h) acc[h] = _mm256_fmadd_ps(y, _mm256_loadu_ps(proj + h * c + j), acc[h]);
      }
      alignas(16) float total[H];
#pragma GCC unroll 2
      for (int h = 0; h < H; h += 4) _mm_store_ps(total + h, hsum4_avx2(acc[h], acc[h + 1], acc[h + 2], acc[h + 3]));
      for (int h = 0; h < H; ++h) out[h * ldo + r0 + i] = total[h];
    }
  }
}

// x [..., C] fp32: contiguous, or 3-D with unit stride along C (any strides
// before it); weight, bias [C] and proj [H, C] fp32, contiguous; C a multiple
// of 8, H 4 or 8. Returns proj · LayerNorm(x)ᵀ, [H, rows], contiguous.
at::Tensor layer_norm_project_fp32(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
                                   const at::Tensor& proj, double eps) {
  const Fp32Rows in(x_in, weight, bias, "layer_norm_project_fp32");
  const int64_t heads = proj.dim() == 2 ? proj.size(0) : 0, rows = in.rows;
  TORCH_CHECK(proj.scalar_type() == at::kFloat && proj.is_contiguous() && (heads == 4 || heads == 8) &&
                  proj.size(1) == in.c, "proj must be float32 [4 or 8, C], contiguous");
  at::Tensor out = at::empty({heads, rows}, in.x.options());
  if (rows == 0) return out;
  const float* xp = in.x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* pp = proj.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    if (heads == 4) {
      normalize_project_rows_fp32<4>(xp, in.s0, in.s1, in.n1, wp, bp, pp, op, rows, begin, end, in.c, float(eps));
    } else {
      normalize_project_rows_fp32<8>(xp, in.s0, in.s1, in.n1, wp, bp, pp, op, rows, begin, end, in.c, float(eps));
    }
  });
  return out;
}

// 8 consecutive floats, or the first n (zeros past them; nothing past them is read).
AF2CPU_AVX2 inline __m256 load_first(const float* p, int64_t n, __m256i m) {
  return n == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
}

// 8 positions per vector, as normalize_columns above: channel rows read in
// place, each 8 x 8 block of normalised values transposed in registers. Four
// vectors (32 positions, two whole cache lines of each channel row) at once:
// four independent chains of c dependent adds instead of one, each lane still
// summing its channels in order (the same result to the bit; 1.08-1.35x faster
// at 50-200 residues on a Zen 3, where 2 and 8 vectors were slower than 4).
constexpr int kColumnVectors = 4;

AF2CPU_AVX2 void normalize_columns_fp32(const float* x, int64_t p_total, int64_t c, const float* w, const float* b,
                                        float* y, int64_t p0, int64_t p1, float eps) {
  const float inv_c = 1.0f / float(c);
  constexpr int V = kColumnVectors;
  for (; p0 < p1; p0 += 8 * V) {
    const int vectors = int(std::min<int64_t>(V, (p1 - p0 + 7) / 8));
    const float* col[V];
    int64_t n[V];
    __m256i m[V];
    for (int v = 0; v < V; ++v) {
      const int u = std::min(v, vectors - 1);  // past the last vector: the last again, not written
      col[v] = x + p0 + 8 * u;
      n[v] = std::min<int64_t>(8, p1 - p0 - 8 * u);
      m[v] = lanes_below(n[v]);
    }
    __m256 sum[V], mean[V], sq[V], rstd[V];
    for (int v = 0; v < V; ++v) sum[v] = sq[v] = _mm256_setzero_ps();
    for (int64_t k = 0; k < c; ++k)
      for (int v = 0; v < V; ++v) sum[v] = _mm256_add_ps(sum[v], load_first(col[v] + k * p_total, n[v], m[v]));
    for (int v = 0; v < V; ++v) mean[v] = _mm256_mul_ps(sum[v], _mm256_set1_ps(inv_c));
    for (int64_t k = 0; k < c; ++k)
      for (int v = 0; v < V; ++v) {
        const __m256 d = _mm256_sub_ps(load_first(col[v] + k * p_total, n[v], m[v]), mean[v]);
        sq[v] = _mm256_fmadd_ps(d, d, sq[v]);
      }
    for (int v = 0; v < V; ++v) {
      const __m256 var = _mm256_mul_ps(sq[v], _mm256_set1_ps(inv_c));
      rstd[v] = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_sqrt_ps(_mm256_add_ps(var, _mm256_set1_ps(eps))));
    }
    for (int v = 0; v < vectors; ++v) {
      for (int64_t k0 = 0; k0 < c; k0 += 8) {
        __m256 r[8];
        for (int k = 0; k < 8; ++k) {
          const __m256 d = _mm256_mul_ps(_mm256_sub_ps(load_first(col[v] + (k0 + k) * p_total, n[v], m[v]), mean[v]),
                                         rstd[v]);
          r[k] = _mm256_fmadd_ps(d, _mm256_set1_ps(w[k0 + k]), _mm256_set1_ps(b[k0 + k]));
        }
        transpose8(r);  // r[i]: position p0 + 8 v + i, channels k0..k0+7
        for (int64_t i = 0; i < n[v]; ++i) _mm256_storeu_ps(y + (p0 + 8 * v + i) * c + k0, r[i]);
      }
    }
  }
}

// x [C, P] fp32, contiguous; weight, bias [C] fp32; C a multiple of 8.
// Returns LayerNorm over C of each position, [P, C]: x.t() normalised, without the transposed copy.
at::Tensor layer_norm_channel_major_fp32(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                         double eps) {
  TORCH_CHECK(has_avx2(), "layer_norm_channel_major_fp32 needs AVX2 and FMA");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be [C, P] float32, contiguous");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat && weight.is_contiguous() &&
                  bias.is_contiguous(), "weight and bias must be float32, contiguous");
  const int64_t c = x.size(0), p = x.size(1);
  TORCH_CHECK(c % 8 == 0 && weight.numel() == c && bias.numel() == c, "channels must be a multiple of 8");
  at::Tensor y = at::empty({p, c}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, (p + 7) / 8, 64, [&](int64_t begin, int64_t end) {
    normalize_columns_fp32(xp, p, c, wp, bp, yp, begin * 8, std::min(end * 8, p), float(eps));
  });
  return y;
}

}  // namespace
}  // namespace af2cpu

TORCH_LIBRARY_FRAGMENT(af2cpu, m) {
  m.def("layer_norm_to_bf16(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor");
  m.def("layer_norm_channel_major_to_bf16(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor");
  m.def("layer_norm_fp32(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor");
  m.def("layer_norm_channel_major_fp32(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor");
  m.def("layer_norm_project_fp32(Tensor x, Tensor weight, Tensor bias, Tensor proj, float eps) -> Tensor");
}
TORCH_LIBRARY_IMPL(af2cpu, CPU, m) {
  m.impl("layer_norm_to_bf16", &af2cpu::layer_norm_to_bf16);
  m.impl("layer_norm_channel_major_to_bf16", &af2cpu::layer_norm_channel_major_to_bf16);
  m.impl("layer_norm_fp32", &af2cpu::layer_norm_fp32);
  m.impl("layer_norm_channel_major_fp32", &af2cpu::layer_norm_channel_major_fp32);
  m.impl("layer_norm_project_fp32", &af2cpu::layer_norm_project_fp32);
}
