// The triangle multiplication's fp32 products: one GEMM per channel, a channel per thread.
//
// out[c] = a[c] @ b[c]^T for a [C, M, K] and b [C, N, K] (any strides; each
// channel's operands are made row-major in the worker if they are not).
// torch.bmm runs fp32 on MKL's sgemm, which takes its AVX2 path on AMD CPUs,
// and oneDNN splitting one channel's product over both threads is little
// faster. Here each thread runs whole channels through oneDNN's GEMM
// (mkldnn::_linear_pointwise, called inside the parallel region, so it runs
// single-threaded). bench/products.py, Zen 5, 2 threads, 128 channels:
// 170 -> 389 GFLOP/s at 400 residues, 173 -> 261 at 177 (outgoing); the
// incoming form's transposed operands are copied per channel: 175 -> 240 at
// 400, about even at 130. With k_block > 0 the inner axis is summed in blocks
// of that many, partial products added in order (MKL's accuracy; see
// primitives.FP32_K_BLOCK).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace af2cpu {
namespace {

const c10::OperatorHandle& onednn_linear() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  return op;
}

// x [M, K] @ w [N, K]^T through oneDNN (fp32 accumulation), on the calling thread.
at::Tensor gemm_nt(const at::Tensor& x, const at::Tensor& w) {
  std::vector<c10::IValue> stack{x, w, c10::IValue(), c10::IValue(std::string("none")),
                                 c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
  onednn_linear().callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace

at::Tensor channel_bmm_nt(const at::Tensor& a, const at::Tensor& b, int64_t k_block) {
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(2),
              "channel_bmm_nt: a [C, M, K] and b [C, N, K]");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "channel_bmm_nt: one dtype");
  const int64_t C = a.size(0), M = a.size(1), N = b.size(1), K = a.size(2);
  at::Tensor out = at::empty({C, M, N}, a.options());
  const int64_t kb = (k_block > 0 && k_block < K) ? k_block : K;
  const bool inference = c10::InferenceMode::is_enabled();  // thread-local: the workers take the caller's
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    c10::InferenceMode guard(inference);
    for (int64_t c = begin; c < end; ++c) {
      const at::Tensor ac = a[c].contiguous(), bc = b[c].contiguous();
      at::Tensor acc;
      for (int64_t k0 = 0; k0 < K; k0 += kb) {  // one pass when kb == K (a whole-width narrow is no copy)
        const int64_t len = std::min(kb, K - k0);
        at::Tensor part = gemm_nt(ac.narrow(1, k0, len).contiguous(), bc.narrow(1, k0, len).contiguous());
        acc = acc.defined() ? acc.add_(part) : part;
      }
      out[c].copy_(acc);
    }
  });
  return out;
}

}  // namespace af2cpu

TORCH_LIBRARY_FRAGMENT(af2cpu, m) { m.def("channel_bmm_nt(Tensor a, Tensor b, int k_block) -> Tensor"); }
TORCH_LIBRARY_IMPL(af2cpu, CPU, m) { m.impl("channel_bmm_nt", &af2cpu::channel_bmm_nt); }
