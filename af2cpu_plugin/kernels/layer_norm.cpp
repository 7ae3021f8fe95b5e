// LayerNorm of fp32 rows written straight to bf16, for the bf16 trunk.
//
// In bf16 the engine keeps its residual streams (pair, MSA) in fp32 and hands
// the GEMMs bf16: every LayerNorm there reads fp32 and must write bf16.
// PyTorch does that as two passes over a pair-sized tensor (layer_norm in
// fp32, then a cast), with an fp32 temporary in between; at 400 residues the
// pair is 82 MB, and the pair stack runs seven of these per block. Here one
// pass reads each row once, keeps fp32 statistics (mean, then the centred
// variance, as haiku computes them) and rounds the scaled result to bf16
// (round to nearest even, as the cast does).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "cpu_features.h"

#include <cmath>
#include <cstdint>

namespace af2cpu {
namespace {

AF2CPU_AVX512_BF16 void normalize_rows(const float* x, const float* w, const float* b, at::BFloat16* y, int64_t rows,
                                       int64_t c, float eps) {
  const float inv_c = 1.0f / float(c);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < c; j += 16) sum = _mm512_add_ps(sum, _mm512_loadu_ps(xr + j));
    const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) * inv_c);
    __m512 sq = _mm512_setzero_ps();
    for (int64_t j = 0; j < c; j += 16) {
      const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xr + j), mean);
      sq = _mm512_fmadd_ps(d, d, sq);
    }
    const __m512 rstd = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(sq) * inv_c + eps));
    for (int64_t j = 0; j < c; j += 16) {
      const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xr + j), mean), rstd);
      const __m512 out = _mm512_fmadd_ps(d, _mm512_loadu_ps(w + j), _mm512_loadu_ps(b + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + r * c + j), (__m256i)_mm512_cvtneps_pbh(out));
    }
  }
}

// x [..., C] fp32, contiguous; weight, bias [C] fp32; C a multiple of 16.
// Returns LayerNorm(x) in bf16, same shape.
at::Tensor layer_norm_to_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  TORCH_CHECK(has_avx512_bf16(), "layer_norm_to_bf16 needs AVX-512 with avx512_bf16");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat,
              "x, weight and bias must be float32");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && bias.is_contiguous(), "inputs must be contiguous");
  const int64_t c = x.size(-1);
  TORCH_CHECK(c % 16 == 0 && weight.numel() == c && bias.numel() == c, "channels must be a multiple of 16");
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const int64_t rows = c == 0 ? 0 : x.numel() / c;
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    normalize_rows(xp + begin * c, wp, bp, yp + begin * c, end - begin, c, float(eps));
  });
  return y;
}

}  // namespace
}  // namespace af2cpu

TORCH_LIBRARY_FRAGMENT(af2cpu, m) { m.def("layer_norm_to_bf16(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor"); }
TORCH_LIBRARY_IMPL(af2cpu, CPU, m) { m.impl("layer_norm_to_bf16", &af2cpu::layer_norm_to_bf16); }
