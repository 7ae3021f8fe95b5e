// Memory-bound passes fused into one: each reads and writes a pair-sized
// tensor once instead of two or three times.
//
// gated_rows_: the triangle multiplication's projection and gate come out of
// one GEMM as channel-major rows [2n, P] (projection rows, then gate rows).
// PyTorch spends three passes on them (add the bias, sigmoid the gate,
// multiply); here each projection row becomes
//   (x[r] + bias[r]) * mask * sigmoid(x[n + r] + bias[n + r])
// in one pass, in fp32, rounded once.
//
// add_into_: the bf16 trunk's residual updates, fp32 MSA stream += bf16
// update (PyTorch first copies the update to fp32, a full temporary, then
// adds) and bf16 pair stream += bf16 or fp32 update (PyTorch's bf16 add
// converts both to fp32 and back in separate loops; here one pass, summed in
// fp32 and rounded once, as PyTorch rounds).
//
// gated_add_: the fp32 triangle multiplication's output, stream += update *
// sigmoid(gate), with update and gate from plain GEMMs. oneDNN's sigmoid and
// binary-mul post-ops slow its AVX2 GEMM: on a Zen 3, two plain GEMMs and this
// one pass ran 1.2-1.6x faster than the two fused GEMMs and the residual
// add (bench/fp32_passes.py, 100 and 200 residues).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "cpu_features.h"
#include "vec_math.h"

#include <algorithm>
#include <cstdint>

namespace af2cpu {
namespace {

constexpr int64_t kBlock = 4096;  // elements of one row per task

// bf16 rows (AVX-512 with avx512_bf16), one block [p0, p1) of projection row r.
AF2CPU_AVX512_BF16 void gated_block(at::BFloat16* x, int64_t n, int64_t P, const float* bias, const float* mask,
                                    int64_t r, int64_t p0, int64_t p1) {
  at::BFloat16* proj = x + r * P;
  const at::BFloat16* gate = x + (n + r) * P;
  const __m512 bp = _mm512_set1_ps(bias[r]), bg = _mm512_set1_ps(bias[n + r]);
  int64_t p = p0;
  for (; p + 16 <= p1; p += 16) {
    __m512 y = _mm512_mul_ps(_mm512_add_ps(load_bf16(proj + p), bp), sigmoid(_mm512_add_ps(load_bf16(gate + p), bg)));
    if (mask != nullptr) y = _mm512_mul_ps(y, _mm512_loadu_ps(mask + p));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(proj + p), (__m256i)_mm512_cvtneps_pbh(y));
  }
  if (p < p1) {  // tail (< 16): through a padded vector, the same arithmetic
    alignas(64) at::BFloat16 a[16] = {}, g[16] = {};
    alignas(64) float m[16] = {};
    const int64_t left = p1 - p;
    for (int64_t i = 0; i < left; ++i) a[i] = proj[p + i], g[i] = gate[p + i], m[i] = mask ? mask[p + i] : 1.0f;
    const __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_add_ps(load_bf16(a), bp), sigmoid(_mm512_add_ps(load_bf16(g), bg))),
                                   _mm512_loadu_ps(m));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a), (__m256i)_mm512_cvtneps_pbh(y));
    for (int64_t i = 0; i < left; ++i) proj[p + i] = a[i];
  }
}

// fp32 rows: AVX2 on every CPU the kernels run on (memory-bound: AVX-512 would not be faster).
AF2CPU_AVX2 void gated_block(float* x, int64_t n, int64_t P, const float* bias, const float* mask, int64_t r,
                             int64_t p0, int64_t p1) {
  float* proj = x + r * P;
  const float* gate = x + (n + r) * P;
  const __m256 bp = _mm256_set1_ps(bias[r]), bg = _mm256_set1_ps(bias[n + r]);
  int64_t p = p0;
  for (; p + 8 <= p1; p += 8) {
    __m256 y = _mm256_mul_ps(_mm256_add_ps(_mm256_loadu_ps(proj + p), bp),
                             sigmoid_avx2(_mm256_add_ps(_mm256_loadu_ps(gate + p), bg)));
    if (mask != nullptr) y = _mm256_mul_ps(y, _mm256_loadu_ps(mask + p));
    _mm256_storeu_ps(proj + p, y);
  }
  if (p < p1) {  // tail (< 8), as above
    alignas(32) float a[8] = {}, g[8] = {}, m[8] = {};
    const int64_t left = p1 - p;
    for (int64_t i = 0; i < left; ++i) a[i] = proj[p + i], g[i] = gate[p + i], m[i] = mask ? mask[p + i] : 1.0f;
    const __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_add_ps(_mm256_load_ps(a), bp),
                                                 sigmoid_avx2(_mm256_add_ps(_mm256_load_ps(g), bg))),
                                   _mm256_load_ps(m));
    _mm256_store_ps(a, y);
    for (int64_t i = 0; i < left; ++i) proj[p + i] = a[i];
  }
}

template <typename T>
void gated_rows_impl(at::Tensor& x, const at::Tensor& bias, const float* mask) {
  const int64_t n = x.size(0) / 2, P = x.size(1), blocks = (P + kBlock - 1) / kBlock;
  T* xp = x.data_ptr<T>();
  const float* bp = bias.data_ptr<float>();
  at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / blocks, p0 = (t % blocks) * kBlock;
      gated_block(xp, n, P, bp, mask, r, p0, std::min(P, p0 + kBlock));
    }
  });
}

// x [2n, P] (fp32 or bf16, contiguous): rows [0, n) become
// (x[r] + bias[r]) * mask * sigmoid(x[n + r] + bias[n + r]), in place.
// bias [2n] fp32; mask [P] fp32 or None (all ones).
void gated_rows_(at::Tensor x, const at::Tensor& bias, const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(0) % 2 == 0, "x must be contiguous [2n, P]");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == x.size(0),
              "bias must be contiguous float32 [2n]");
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kFloat && mask->is_contiguous() && mask->numel() == x.size(1),
                "mask must be contiguous float32 [P]");
  }
  const float* mp = mask ? mask->data_ptr<float>() : nullptr;
  if (x.scalar_type() == at::kBFloat16) {
    TORCH_CHECK(has_avx512_bf16(), "bf16 gated_rows_ needs AVX-512 with avx512_bf16");
    gated_rows_impl<at::BFloat16>(x, bias, mp);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "x must be float32 or bfloat16");
    TORCH_CHECK(has_avx2(), "gated_rows_ needs AVX2 and FMA");
    gated_rows_impl<float>(x, bias, mp);
  }
}

// acc[a, b, :] += update[a, b, :] for one row (C a multiple of 16).
AF2CPU_AVX512 void add_row(float* acc, const at::BFloat16* update, int64_t C) {
  for (int64_t c = 0; c < C; c += 16)
    _mm512_storeu_ps(acc + c, _mm512_add_ps(_mm512_loadu_ps(acc + c), load_bf16(update + c)));
}

// bf16 acc row += bf16 or fp32 update row: fp32 sum, rounded once.
template <typename U>
AF2CPU_AVX512_BF16 void add_row(at::BFloat16* acc, const U* update, int64_t C) {
  for (int64_t c = 0; c < C; c += 16) {
    const __m512 y = _mm512_add_ps(load_bf16(acc + c), load16(update + c));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + c), (__m256i)_mm512_cvtneps_pbh(y));
  }
}

template <typename A_, typename U>
void add_rows(at::Tensor& acc, const at::Tensor& update) {
  const int64_t A = acc.size(0), B = acc.size(1), C = acc.size(2);
  const int64_t s0 = update.stride(0), s1 = update.stride(1), a0 = acc.stride(0), a1 = acc.stride(1);
  A_* ap = acc.data_ptr<A_>();
  const U* up = update.data_ptr<U>();
  at::parallel_for(0, A * B, std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) add_row(ap + (t / B) * a0 + (t % B) * a1, up + (t / B) * s0 + (t % B) * s1, C);
  });
}

// acc [A, B, C] += update [A, B, C], both with unit stride along C (any
// strides along A and B: transposed views are added without a copy): fp32
// acc with a bf16 update, or bf16 acc with a bf16 or fp32 update.
at::Tensor add_into_(at::Tensor acc, const at::Tensor& update) {
  TORCH_CHECK(acc.dim() == 3 && acc.sizes() == update.sizes(), "acc and update must be 3-D and the same shape");
  TORCH_CHECK(acc.stride(2) == 1 && update.stride(2) == 1 && acc.size(2) % 16 == 0,
              "acc and update need unit stride along a last dimension that is a multiple of 16");
  const auto a = acc.scalar_type(), u = update.scalar_type();
  if (a == at::kFloat && u == at::kBFloat16) {
    TORCH_CHECK(has_avx512(), "add_into_ needs AVX-512");
    add_rows<float, at::BFloat16>(acc, update);
  } else if (a == at::kBFloat16 && (u == at::kBFloat16 || u == at::kFloat)) {
    TORCH_CHECK(has_avx512_bf16(), "add_into_ into bf16 needs AVX-512 with avx512_bf16");
    if (u == at::kFloat) add_rows<at::BFloat16, float>(acc, update);
    else add_rows<at::BFloat16, at::BFloat16>(acc, update);
  } else {
    TORCH_CHECK(false, "add_into_ takes float32 += bfloat16 or bfloat16 += bfloat16/float32");
  }
  return acc;
}

// acc row += x row * sigmoid(g row), C a multiple of 8: the product rounded, then the sum (haiku's order).
AF2CPU_AVX2 void gated_add_row(float* acc, const float* x, const float* g, int64_t C) {
  for (int64_t c = 0; c < C; c += 8) {
    const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + c), sigmoid_avx2(_mm256_loadu_ps(g + c)));
    _mm256_storeu_ps(acc + c, _mm256_add_ps(_mm256_loadu_ps(acc + c), y));
  }
}

// acc [M, C] += x [M, C] * sigmoid(gate [M, C]), fp32, unit stride along C
// (a multiple of 8), any row strides (a view of a wider GEMM output is fine).
at::Tensor gated_add_(at::Tensor acc, const at::Tensor& x, const at::Tensor& gate) {
  TORCH_CHECK(acc.dim() == 2 && acc.sizes() == x.sizes() && acc.sizes() == gate.sizes(),
              "acc, x and gate must be 2-D and the same shape");
  TORCH_CHECK(acc.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat && gate.scalar_type() == at::kFloat,
              "gated_add_ takes float32");
  TORCH_CHECK(acc.stride(1) == 1 && x.stride(1) == 1 && gate.stride(1) == 1 && acc.size(1) % 8 == 0,
              "acc, x and gate need unit stride along a last dimension that is a multiple of 8");
  TORCH_CHECK(has_avx2(), "gated_add_ needs AVX2 and FMA");
  const int64_t M = acc.size(0), C = acc.size(1);
  const int64_t sa = acc.stride(0), sx = x.stride(0), sg = gate.stride(0);
  float* ap = acc.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* gp = gate.data_ptr<float>();
  at::parallel_for(0, M, std::max<int64_t>(1, kBlock / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) gated_add_row(ap + m * sa, xp + m * sx, gp + m * sg, C);
  });
  return acc;
}

}  // namespace
}  // namespace af2cpu

TORCH_LIBRARY_FRAGMENT(af2cpu, m) {
  m.def("gated_rows_(Tensor(a!) x, Tensor bias, Tensor? mask) -> ()");
  m.def("add_into_(Tensor(a!) acc, Tensor update) -> Tensor(a!)");
  m.def("gated_add_(Tensor(a!) acc, Tensor x, Tensor gate) -> Tensor(a!)");
}
TORCH_LIBRARY_IMPL(af2cpu, CPU, m) {
  m.impl("gated_rows_", &af2cpu::gated_rows_);
  m.impl("add_into_", &af2cpu::add_into_);
  m.impl("gated_add_", &af2cpu::gated_add_);
}
