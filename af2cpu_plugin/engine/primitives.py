"""Small reusable building blocks with AlphaFold's parameter layout.

Parameters keep the exact shapes of the haiku originals (``weights`` of shape
``[in..., out...]``, attention projections ``[c, heads, dim]``), so binding a
converted params file is a name lookup with no reshaping, and the engine's
expected parameter set can be compared against the file key by key.
The modules hold no values of their own: :mod:`.params` binds them.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from .. import kernels
from . import weight_pages
from .policy import compute_dtype, current_policy

# AF2's additive mask value and its logit clip (alphafold.model.half_precision),
# at fp32. Clipping matters: a fully masked row would otherwise give NaN.
BIG_NEG = -1e9
LOGIT_CLIP = 1e8


def empty_param(*shape: int) -> nn.Parameter:
    """An unbound parameter; its value comes from a params file."""
    return nn.Parameter(torch.empty(shape), requires_grad=False)


def mask_to_bias(mask: torch.Tensor) -> torch.Tensor:
    """AF2's ``1e9 * (mask - 1)`` attention bias."""
    return BIG_NEG * (1.0 - mask.to(torch.float32))


# --- GEMM -------------------------------------------------------------------
# oneDNN's fp32 inner-product kernel is about twice as fast as MKL's sgemm (what
# torch.matmul/addmm use) on this engine's [N*N, c] x [c, c'] shapes, and it
# applies the bias (and a ReLU, or a product with another tensor) in the same
# pass over the output. It is still fp32 with fp32 accumulation: results equal
# addmm's to rounding. It wants the weight as [out, in]. In bf16 it takes bf16
# operands and accumulates in fp32 (avx512_bf16 dot products where the CPU has
# them).
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# oneDNN has no bf16 inner product for a CPU without AVX-512 (a Zen 3: "could not create a primitive
# descriptor"); there bf16 goes through PyTorch's own GEMM (slow, which is why `--precision auto` never picks
# bf16 there, but the engine still computes it).
_ONEDNN_DTYPES = (torch.float32,) + (
    (torch.bfloat16,) if _ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported() else ())


def linear_2d(
    x: torch.Tensor, weight_t: torch.Tensor, bias: Optional[torch.Tensor], post: str = "none"
) -> torch.Tensor:
    """``post(x @ weight_t.T + bias)`` for 2-D ``x`` [m, in], ``weight_t`` [out, in].

    ``post`` is ``"none"``, ``"relu"`` or ``"sigmoid"``.
    """
    if _ONEDNN and x.dtype in _ONEDNN_DTYPES:
        return torch.ops.mkldnn._linear_pointwise(x, weight_t, bias, post, [], "")
    return _POST[post](F.linear(x, weight_t, bias))


_POST = {"none": lambda y: y, "relu": torch.relu_, "sigmoid": torch.sigmoid_}


def linear_2d_mul(
    x: torch.Tensor, weight_t: torch.Tensor, bias: Optional[torch.Tensor], other: torch.Tensor
) -> torch.Tensor:
    """``(x @ weight_t.T + bias) * other`` with the product fused into the GEMM's output pass."""
    if _ONEDNN and x.dtype in _ONEDNN_DTYPES and other.dtype == x.dtype and other.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise(x, other, weight_t, bias, "mul")
    return F.linear(x, weight_t, bias).mul_(other)


# oneDNN's fp32 GEMM runs each output's sum over a long inner axis as one chain
# of additions, so its rounding error grows with the length (measured on random
# [192, 5120] x [5120, 1888]: twice MKL's max and mean error). MKL and XLA's
# Eigen block that axis. Over the extra MSA's 5,120 sequences (the outer product
# mean) the chain moved the deep-MSA parity case 4x past JAX's own 1-ulp floor
# after 3 recycles; summed in blocks of this many, partial products added in
# order, the error is MKL's again (1.2e-4 max, 1.7e-5 mean against MKL's 1.0e-4
# and 1.5e-5) at 1.9x MKL's speed. bf16 products accumulate in fp32 already.
FP32_K_BLOCK = 256


def matmul_2d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D operands through oneDNN (MKL's sgemm, what ``torch.matmul`` calls, is
    about half as fast here). ``b`` goes in as the transposed view of a [out, in] weight: no copy.
    In fp32 a long inner axis is summed in blocks of :data:`FP32_K_BLOCK`."""
    if not (_ONEDNN and a.dtype in _ONEDNN_DTYPES and b.dtype == a.dtype):
        return torch.matmul(a, b)
    gemm = torch.ops.mkldnn._linear_pointwise
    k = a.shape[1]
    if a.dtype != torch.float32 or k <= FP32_K_BLOCK:
        return gemm(a, b.t(), None, "none", [], "")
    out = gemm(a[:, :FP32_K_BLOCK], b[:FP32_K_BLOCK].t(), None, "none", [], "")
    for k0 in range(FP32_K_BLOCK, k, FP32_K_BLOCK):
        out.add_(gemm(a[:, k0 : k0 + FP32_K_BLOCK], b[k0 : k0 + FP32_K_BLOCK].t(), None, "none", [], ""))
    return out


# Below this many rows a channel's product is too small for a oneDNN call of its own: on 2 Zen 5 cores
# (bench/products.py, 128 channels) torch.bmm took 0.4 ms against 0.9-1.2 at 59 residues (the deep-MSA
# chain), 1.4 against 1.4-2.2 at 100; at 130 about even (3.4-3.5 against 2.8-3.6), at 177 the kernel wins.
CHANNEL_BMM_MIN_ROWS = 128


def channel_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.transpose(1, 2)`` for a [C, M, K] and b [C, N, K] (any strides): a GEMM per channel.

    fp32 on an AVX-512 CPU runs on the native kernel (each thread runs whole
    channels through oneDNN; a long inner axis is summed in blocks of
    :data:`FP32_K_BLOCK`, as :func:`matmul_2d` does). ``bench/products.py`` on a
    Zen 5: 2.3x ``torch.bmm`` (MKL) at 400 residues, 1.5x at 177 (incoming:
    1.4x, 1.2x; about even at 130; slower below, so from
    :data:`CHANNEL_BMM_MIN_ROWS` rows); with oneDNN held to AVX2 it lost to MKL,
    so AVX2-only CPUs keep ``torch.bmm``. bf16 stays on ``torch.bmm``, which is
    oneDNN's already and faster there than one channel per thread.
    """
    if current_policy().kernels == "native" and a.shape[1] >= CHANNEL_BMM_MIN_ROWS and kernels.can_channel_bmm(a):
        return kernels.channel_bmm_nt(a, b, FP32_K_BLOCK)
    return torch.bmm(a, b.transpose(1, 2))


def gated_rows_(x: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Rows ``[:n]`` of ``x`` [2n, P] become ``(x[r] + bias[r]) * mask * sigmoid(x[n+r] + bias[n+r])``, in place.

    A GLU over channel-major rows (the triangle multiplication's projection
    and gate); ``bias`` [2n] and ``mask`` [P] (None: all ones) are fp32. Returns
    ``x[:n]``. The native kernel does it in one pass, rounded once.
    """
    if current_policy().kernels == "native" and kernels.can_gate_rows(x):
        return kernels.gated_rows_(x, bias, mask)
    n = x.shape[0] // 2
    proj, gate = x[:n], x[n:]
    proj.add_(bias[:n, None].to(x.dtype))
    if mask is not None:
        proj.mul_(mask.to(x.dtype))
    return proj.mul_(gate.add_(bias[n:, None].to(x.dtype)).sigmoid_())


def residual_add_(stream: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``stream += update`` (a dropout_wrapper at inference).

    The MSA streams are fp32; the pair is fp32 or, where memory is short, bf16 (:func:`.policy.pair_dtype`);
    updates are bf16 or fp32. The native kernel adds a bf16 update to an fp32 stream without first copying it to fp32,
    and into a bf16 stream in one pass, rounded once (as PyTorch's add rounds).
    """
    if current_policy().kernels == "native" and kernels.can_add_into(stream, update):
        return kernels.add_into_(stream, update)
    return stream.add_(update)


def is_upcast(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``x`` is stored in less precision than ``dtype`` (a bf16 pair read by fp32 code)."""
    return x.is_floating_point() and x.dtype.itemsize < dtype.itemsize


def by_upcast_rows(x: torch.Tensor, dtype: torch.dtype, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn(x.to(dtype))``, computed row slice by row slice into one result.

    Where the runner stores the trunk's pair in bf16 (``RuntimePolicy.pair_storage``),
    the structure module and heads, which compute in fp32, read its fp32
    values (ColabFold casts the trunk's outputs to fp32). Cast slice by slice,
    the numbers are the same and no whole fp32 copy of the pair is made
    (4.3 GiB at 3,000 residues).
    """
    from .chunking import row_slices  # chunking builds on this module

    out = None
    for start, rows in row_slices(x):
        y = fn(x.narrow(0, start, rows).to(dtype))
        if out is None:
            out = y.new_empty((x.shape[0], *y.shape[1:]))
        out.narrow(0, start, rows).copy_(y)
    return out


def to_float16_(x: torch.Tensor) -> torch.Tensor:
    """``x.to(torch.float16)``; a contiguous bf16 ``x`` is converted in its own storage, which it gives up.

    The recycled pair is float16 (ColabFold's runner casts it). At the end of
    a pass the bf16 pair and the two [L, L, 64] head logits are alive; a
    float16 copy of the pair on top is the pass's peak at long lengths (3.8
    GiB more at 4,000 residues). bf16 and float16 have the same width, so
    each row slice is read into a float32 scratch, then written back as
    float16 into the bytes it came from: the same numbers, no second pair.
    """
    if x.dtype != torch.bfloat16 or not x.is_contiguous() or x.dim() == 0:
        return x.to(torch.float16)
    from .chunking import row_slices

    out = x.view(torch.float16)
    for start, rows in row_slices(x):
        out.narrow(0, start, rows).copy_(x.narrow(0, start, rows).float())
    return out


def derived(module: nn.Module, name: str, build: Callable[..., object], *sources: torch.Tensor):
    """``build(*sources)``, cached on ``module`` until a source parameter changes.

    Modules keep haiku's parameter layout (that is what gets bound), and derive
    the layouts their kernels want (weights transposed or concatenated) here,
    once per binding rather than once per call. A cache entry is stale when a
    source was rebound (``param.data = ...``: new storage, hence a new address;
    the entry keeps the old storage alive, so that address cannot be reused
    while it is cached) or changed in place (its version counter moved).
    :func:`.params.bind_params` also drops every cache, to free the memory.
    Sources mapped from the safetensors cache then leave RSS
    (:mod:`.weight_pages`): the weights are held once, in the kernel's layout.
    """
    cache = module.__dict__.setdefault("_derived_cache", {})
    stamp = tuple((p.data_ptr(), _version(p)) for p in sources)
    entry = cache.get(name)
    if entry is not None and entry[0] == stamp:
        return entry[2]
    with torch.no_grad():
        value = build(*(p.detach() for p in sources))
    cache[name] = (stamp, tuple(p.detach() for p in sources), value)
    weight_pages.release(sources, value)
    return value


def in_compute_dtype(module: nn.Module, name: str, param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``param`` as ``dtype`` (itself when it already is), cast once per binding."""
    if param.dtype == dtype:
        return param
    return derived(module, f"{name}@{dtype}", lambda p: p.to(dtype), param)


def _version(p: torch.Tensor) -> int:
    # Inference tensors keep no version counter (and cannot be changed outside inference mode).
    return -1 if p.is_inference() else p._version


def clear_derived(model: nn.Module) -> None:
    """Forget every layout :func:`derived` cached under ``model``."""
    for module in model.modules():
        module.__dict__.pop("_derived_cache", None)


def gated_residual_add_(stream: torch.Tensor, update: "Linear", x: torch.Tensor, gate: "Linear",
                        gate_x: torch.Tensor) -> torch.Tensor:
    """``stream += update(x) * sigmoid(gate(gate_x))``: a gated output added to its residual stream.

    ``stream`` is [M, C] (rows may be strided); ``x`` and ``gate_x`` are [M, ·]. In fp32 both GEMMs are plain and
    the native kernel applies the gate and adds in one pass: oneDNN's sigmoid and binary-mul post-ops slow its
    AVX2 GEMM down more than that pass costs. Elsewhere (bf16, stock or IPEX kernels) the gate and the product
    are the GEMMs' post-ops.
    """
    if compute_dtype() == torch.float32 and current_policy().kernels == "native" and stream.dtype == torch.float32:
        g, y = gate(gate_x), update(x)
        if kernels.can_gated_add(stream, y, g):
            return kernels.gated_add_(stream, y, g)
        return stream.add_(y.mul_(g.sigmoid_()))
    return residual_add_(stream, update.forward_mul(x, gate.forward_sigmoid(gate_x)))


class Linear(nn.Module):
    """``y = x·W + b`` over the last ``num_input_dims`` axes (common_modules.Linear)."""

    def __init__(
        self,
        num_input: Union[int, Sequence[int]],
        num_output: Union[int, Sequence[int]],
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_shape: Tuple[int, ...] = (num_input,) if isinstance(num_input, int) else tuple(num_input)
        self.out_shape: Tuple[int, ...] = (num_output,) if isinstance(num_output, int) else tuple(num_output)
        self.weights = empty_param(*self.in_shape, *self.out_shape)
        self.bias = empty_param(*self.out_shape) if use_bias else None

    def kernel_params(self, dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(weight [out, in] contiguous, flat bias or None) in ``dtype``: the layout :func:`linear_2d` takes."""
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        if self.bias is None:
            return derived(self, f"w_t@{dtype}", lambda w: w.reshape(n_in, n_out).t().to(dtype).contiguous(),
                           self.weights), None
        return derived(
            self, f"w_t_b@{dtype}",
            lambda w, b: (w.reshape(n_in, n_out).t().to(dtype).contiguous(), b.reshape(n_out).to(dtype)),
            self.weights, self.bias,
        )

    def _apply(self, x: torch.Tensor, post: str = "none", other: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``post(x·W + b) [* other]`` in the region's compute dtype (the output is in that dtype too)."""
        lead = x.shape[: x.dim() - len(self.in_shape)]
        dtype = compute_dtype()
        if other is None and lead and is_upcast(x, dtype):
            return by_upcast_rows(x, dtype, lambda rows: self._apply(rows, post))
        w_t, b = self.kernel_params(dtype)
        x2 = x.reshape(-1, w_t.shape[1]).to(dtype)
        if other is not None:
            other = other.reshape(x2.shape[0], -1).to(dtype)
        if current_policy().kernels == "ipex":
            from af2cpu_plugin import ipex

            y = ipex.linear(x2, w_t, b, post, other)
        elif other is not None:
            y = linear_2d_mul(x2, w_t, b, other)
        else:
            y = linear_2d(x2, w_t, b, post)
        return y.reshape(*lead, *self.out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x)

    def forward_relu(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(self(x))``, the ReLU applied in the GEMM's output pass."""
        return self._apply(x, post="relu")

    def forward_sigmoid(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(self(x))``, the sigmoid applied in the GEMM's output pass."""
        return self._apply(x, post="sigmoid")

    def forward_mul(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``self(x) * other`` (``other`` shaped like the output), the product fused into the GEMM."""
        return self._apply(x, other=other)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with ``scale``/``offset`` (eps 1e-5, as haiku).

    Statistics are always computed in fp32 (as haiku's LayerNorm upcasts
    half-precision input); the output is in the region's compute dtype, since
    it feeds the GEMMs that follow.
    """

    def __init__(self, num_channel: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channel = num_channel
        self.eps = eps
        self.scale = empty_param(num_channel)
        self.offset = empty_param(num_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype()
        if is_upcast(x, dtype) and x.dim() > 1:  # the bf16 pair read by the fp32 structure module
            return by_upcast_rows(x, dtype, self)
        if dtype == torch.bfloat16 and current_policy().kernels == "native":
            if kernels.can_layer_norm_to_bf16(x):  # fp32 stream in, bf16 out: one pass, no fp32 temporary
                return kernels.layer_norm_to_bf16(x, self.scale, self.offset, self.eps)
        elif dtype == torch.float32 and current_policy().kernels == "native" and kernels.can_layer_norm_fp32(x):
            return kernels.layer_norm_fp32(x, self.scale, self.offset, self.eps)  # strided views without a copy
        # torch's CPU kernel accumulates bf16 input in fp32 (mixed-type layer norm).
        y = nn.functional.layer_norm(x, (self.num_channel,), self.scale, self.offset, self.eps)
        return y.to(dtype)

    def forward_projected(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight @ self(x).T`` for ``x`` [..., C] and a few output rows ``weight`` [H, C]: [H, rows].

        The pair's per-head attention bias. The native fp32 kernel normalises each row in registers and
        projects it there, without writing the normalised rows or running a 4- or 8-output GEMM.
        """
        dtype = compute_dtype()
        if dtype == torch.float32 and current_policy().kernels == "native" and \
                kernels.can_layer_norm_project_fp32(x, weight):
            return kernels.layer_norm_project_fp32(x, self.scale, self.offset, weight, self.eps)
        act = self(x)
        return linear_2d(weight.to(act.dtype), act.reshape(-1, act.shape[-1]), None)

    def forward_channel_major(self, x: torch.Tensor) -> torch.Tensor:
        """``self(x.movedim(0, -1))`` for channel-major ``x`` [C, ...]: the result is [..., C].

        The native kernels normalise the channel rows where they lie, in place of the permuted copy (the
        triangle multiplication's products).
        """
        if current_policy().kernels == "native":
            dtype = compute_dtype()
            if dtype == torch.bfloat16 and kernels.can_layer_norm_channel_major(x):
                return kernels.layer_norm_channel_major_to_bf16(x, self.scale, self.offset, self.eps)
            if dtype == torch.float32 and kernels.can_layer_norm_channel_major_fp32(x):
                return kernels.layer_norm_channel_major_fp32(x, self.scale, self.offset, self.eps)
        return self(x.movedim(0, -1))


class Attention(nn.Module):
    """Gated multi-head attention (modules.Attention).

    Used by MSA row/column attention (Suppl. Alg. 7, 8) and triangle
    attention (Suppl. Alg. 13, 14).
    """

    def __init__(
        self,
        q_channel: int,
        m_channel: int,
        output_dim: int,
        num_head: int,
        gating: bool = True,
        key_dim: Optional[int] = None,
        value_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        key_dim = key_dim if key_dim is not None else q_channel
        value_dim = value_dim if value_dim is not None else m_channel
        assert key_dim % num_head == 0 and value_dim % num_head == 0
        self.num_head = num_head
        self.key_dim = key_dim // num_head
        self.value_dim = value_dim // num_head
        self.query_w = empty_param(q_channel, num_head, self.key_dim)
        self.key_w = empty_param(m_channel, num_head, self.key_dim)
        self.value_w = empty_param(m_channel, num_head, self.value_dim)
        self.gating = gating
        if gating:
            self.gating_w = empty_param(q_channel, num_head, self.value_dim)
            self.gating_b = empty_param(num_head, self.value_dim)
        self.output_w = empty_param(num_head, self.value_dim, output_dim)
        self.output_b = empty_param(output_dim)

    @classmethod
    def from_config(cls, config, q_channel: int, m_channel: Optional[int] = None) -> "Attention":
        """As haiku builds it from a module config: output width = query width,
        key/value widths from the config when given (templates), else the inputs'."""
        m_channel = q_channel if m_channel is None else m_channel
        return cls(q_channel, m_channel, q_channel, config.num_head, gating=config.gating,
                   key_dim=config.get("key_dim", q_channel), value_dim=config.get("value_dim", m_channel))

    def _projection_params(self, with_kv: bool, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """One [out, c] weight (and bias) for the query, (key, value,) and gate projections.

        Concatenating them makes the projections one wide GEMM. The query scale
        ``key_dim**-0.5`` is folded into the query weights (AF2 scales q after
        the projection: the same to rounding). Only the gate has a bias.
        """

        def build(query_w, key_w, value_w, gating_w, gating_b):
            c = query_w.shape[0]
            parts = [query_w.reshape(c, -1) * self.key_dim ** (-0.5)]
            if with_kv:
                parts += [key_w.reshape(c, -1), value_w.reshape(c, -1)]
            if self.gating:
                parts.append(gating_w.reshape(c, -1))
            weight_t = torch.cat(parts, dim=1).t().contiguous()
            bias = torch.zeros(weight_t.shape[0], dtype=weight_t.dtype)
            if self.gating:
                bias[-gating_b.numel():] = gating_b.reshape(-1)
            return weight_t.to(dtype), bias.to(dtype)

        gating = (self.gating_w, self.gating_b) if self.gating else (self.query_w, self.query_w)
        return derived(self, f"proj{int(with_kv)}@{dtype}", build, self.query_w, self.key_w, self.value_w, *gating)

    def _kv_params(self, dtype: torch.dtype) -> torch.Tensor:
        return derived(
            self, f"kv@{dtype}",
            lambda k, v: torch.cat([k.reshape(k.shape[0], -1), v.reshape(v.shape[0], -1)], 1).t().to(dtype).contiguous(),
            self.key_w, self.value_w,
        )

    def _output_params(self, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        return derived(
            self, f"out@{dtype}", lambda w, b: (w.reshape(-1, w.shape[-1]).t().to(dtype).contiguous(), b.to(dtype)),
            self.output_w, self.output_b,
        )

    def forward(
        self,
        q_data: torch.Tensor,
        m_data: torch.Tensor,
        bias: torch.Tensor,
        nonbatched_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """q_data [b, q, c], m_data [b, k, c], bias broadcastable to [b, h, q, k],
        nonbatched_bias [h, q, k] -> [b, q, output_dim], in the region's compute dtype.

        In bf16 the kernel takes bf16 q, k, v and mask and keeps its running
        softmax statistics and accumulators in fp32."""
        dtype = compute_dtype()
        b, nq, _ = q_data.shape
        nk = m_data.shape[1]
        h, ck, cv = self.num_head, self.key_dim, self.value_dim
        qk_width = h * ck
        # Projections as plain 2-D GEMMs; heads are split by views, not copies.
        self_attention = q_data is m_data
        proj = linear_2d(q_data.reshape(b * nq, -1).to(dtype), *self._projection_params(self_attention, dtype))
        if self_attention:
            kv = proj[:, qk_width : 2 * qk_width + h * cv]
        else:
            kv = linear_2d(m_data.reshape(b * nk, -1).to(dtype), self._kv_params(dtype), None)
        q = proj[:, :qk_width].view(b, nq, h, ck).transpose(1, 2)
        k = kv[:, :qk_width].view(b, nk, h, ck).transpose(1, 2)
        v = kv[:, qk_width:].view(b, nk, h, cv).transpose(1, 2)

        gate = proj[:, -h * cv :].view(b, nq, h, cv).transpose(1, 2) if self.gating else None

        mask = _additive_mask(bias, nonbatched_bias).to(dtype)
        dead = _fully_masked_queries(bias)
        if dead is None:
            out = _biased_attention(q, k, v, mask, gate)
        else:
            out = torch.where(dead, v.mean(dim=-2, keepdim=True), _biased_attention(q, k, v, mask))
            out = out if gate is None else out * gate.sigmoid()
        # The kernels write [b, q, h, c] memory, so this is a view.
        weighted_avg = out.transpose(1, 2).reshape(b * nq, h * cv)
        return linear_2d(weighted_avg, *self._output_params(dtype)).view(b, nq, -1)


class KeyStream:
    """``attention(q_data, m_data, bias)`` with the keys ``m_data`` (and their ``bias``) given block by block.

    A running softmax, as flash attention runs over key tiles: each query keeps
    the max and the sum of its logits so far and its weighted values,
    rescaled when a later block raises the max; all in fp32. So the keys are
    never held at once. For Suppl. Alg. 17 (TemplatePointwiseAttention) each
    template's [R*R, 1, c_t] embedding is attended as soon as it is made, then
    dropped: stacked, 4 templates would hold two pair-sized fp32 tensors more
    (4.3 GiB at 3,000 residues). The same result to rounding. Queries are
    projected again for each block (a [q, c] x [c, h*ck] GEMM, small next to
    what makes a block), in the policy's row slices.
    """

    def __init__(self, attention: "Attention", q_data: torch.Tensor) -> None:
        b, nq, _ = q_data.shape
        h, cv = attention.num_head, attention.value_dim
        self.attention, self.q_data = attention, q_data
        self.max = q_data.new_full((b, h, nq, 1), float("-inf"), dtype=torch.float32)
        self.sum = q_data.new_zeros((b, h, nq, 1), dtype=torch.float32)
        self.acc = q_data.new_zeros((b, h, nq, cv), dtype=torch.float32)

    def _queries(self, start: int, rows: int) -> torch.Tensor:
        """Projected queries (pre-scaled) and gates of rows ``start:start+rows``: [r, nq, h*ck (+ h*cv)]."""
        a, dtype = self.attention, compute_dtype()
        q_data = self.q_data.narrow(0, start, rows)
        proj = linear_2d(q_data.reshape(-1, q_data.shape[-1]).to(dtype), *a._projection_params(False, dtype))
        return proj.view(rows, q_data.shape[1], -1)

    def add(self, m_data: torch.Tensor, bias: torch.Tensor) -> None:
        """Attend to one block of keys: m_data [b, k, c], bias broadcastable to [b, h, nq, k]."""
        from .chunking import row_slices  # chunking builds on this module

        a, dtype = self.attention, compute_dtype()
        h, ck, cv = a.num_head, a.key_dim, a.value_dim
        nk = m_data.shape[1]
        for start, rows in row_slices(m_data):
            nq = self.q_data.shape[1]
            q = self._queries(start, rows)[..., : h * ck].reshape(rows, nq, h, ck).transpose(1, 2)
            kv = linear_2d(m_data.narrow(0, start, rows).reshape(rows * nk, -1).to(dtype), a._kv_params(dtype), None)
            k = kv[:, : h * ck].view(rows, nk, h, ck).transpose(1, 2)
            v = kv[:, h * ck:].view(rows, nk, h, cv).transpose(1, 2)
            logits = torch.matmul(q.float(), k.float().transpose(-1, -2))
            logits += bias.narrow(0, start, rows) if bias.dim() == 4 and bias.shape[0] > 1 else bias
            top, total, acc = (t.narrow(0, start, rows) for t in (self.max, self.sum, self.acc))
            new_top = torch.maximum(top, logits.amax(-1, keepdim=True))
            rescale = torch.exp(top - new_top)  # 0 before the first block (its max is -inf)
            weights = torch.exp(logits - new_top)
            total.mul_(rescale).add_(weights.sum(-1, keepdim=True))
            acc.mul_(rescale).add_(torch.matmul(weights, v.float()))
            top.copy_(new_top)

    def result(self) -> torch.Tensor:
        """[b, nq, output_dim], in the region's compute dtype (as :meth:`Attention.forward` returns)."""
        from .chunking import row_slices

        a, dtype = self.attention, compute_dtype()
        b, h, nq, cv = self.acc.shape
        out = None
        for start, rows in row_slices(self.acc):
            weighted = self.acc.narrow(0, start, rows) / self.sum.narrow(0, start, rows)  # [r, h, nq, cv]
            if a.gating:
                gate = self._queries(start, rows)[..., -h * cv:].reshape(rows, nq, h, cv).transpose(1, 2)
                weighted = weighted * gate.float().sigmoid()
            weighted = weighted.transpose(1, 2).reshape(rows * nq, h * cv).to(dtype)
            y = linear_2d(weighted, *a._output_params(dtype)).view(rows, nq, -1)
            if out is None:
                out = y.new_empty((b, nq, y.shape[-1]))
            out.narrow(0, start, rows).copy_(y)
        return out


def _biased_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, gate: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """softmax(q k^T + mask) v [* sigmoid(gate)], [b, h, q, c] with [b, q, h, c] memory, by the policy's kernel.

    Both kernels do logits, softmax and the weighted average in tiles without
    the [b, h, q, k] weights (q is pre-scaled, hence scale=1). The native one
    (:mod:`af2cpu_plugin.kernels`) is built for AlphaFold's head sizes and
    applies the gate as it stores the result; PyTorch's SDPA takes the rest
    and every CPU. ``gate`` may be overwritten (it is a view of the
    projections, which are consumed by now).
    """
    if current_policy().kernels == "native":
        if kernels.can_attend(q, k):
            return kernels.biased_attention(q, k, v, mask, gate)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    return out if gate is None else out.mul_(gate.sigmoid_())


def _additive_mask(bias: torch.Tensor, nonbatched_bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``bias + nonbatched_bias`` as one attention mask, materialized only when it must be.

    The kernel takes broadcast masks. With no masked key (bias all zero, the
    unpadded case) the sum is the pair bias itself, shared by the batch.
    Otherwise the [b, h, q, k] sum is written once, contiguous (the kernel
    would copy a strided one).
    """
    if nonbatched_bias is None:
        return bias
    bias = bias.to(nonbatched_bias.dtype)  # [b, 1, 1, k]: cheap, and the sum below stays in that dtype
    nonbatched_bias = nonbatched_bias.unsqueeze(0)
    if not bool(bias.any()):
        return nonbatched_bias
    shape = torch.broadcast_shapes(bias.shape, nonbatched_bias.shape)
    return torch.add(bias, nonbatched_bias, out=bias.new_empty(shape))


def _fully_masked_queries(bias: torch.Tensor) -> Optional[torch.Tensor]:
    """Where a query's keys are all masked ([b|1, h|1, q|1, 1]), or None when no query is.

    AF2 clips the logits to ±LOGIT_CLIP before the softmax, so a row whose keys
    all carry the mask bias (-1e9, far below -LOGIT_CLIP) becomes a row of equal
    logits: uniform weights, whatever q·k and the pair bias were, so its result
    is the plain mean of the values. The unclipped softmax would weight such a
    row by those small terms instead. bias broadcastable to [b, h, q, k].
    """
    dead = (bias <= BIG_NEG / 2).all(dim=-1, keepdim=True)
    return dead if bool(dead.any()) else None


class GlobalAttention(nn.Module):
    """Global (mean-query) gated attention (modules.GlobalAttention).

    Suppl. Alg. 19 "MSAColumnGlobalAttention", lines 2-7.
    """

    def __init__(self, q_channel: int, m_channel: int, output_dim: int, num_head: int, gating: bool = True) -> None:
        super().__init__()
        key_dim, value_dim = q_channel, m_channel
        assert key_dim % num_head == 0 and value_dim % num_head == 0
        self.num_head = num_head
        self.key_dim = key_dim // num_head
        self.value_dim = value_dim // num_head
        self.query_w = empty_param(q_channel, num_head, self.key_dim)
        self.key_w = empty_param(m_channel, self.key_dim)
        self.value_w = empty_param(m_channel, self.value_dim)
        self.gating = gating
        if gating:
            self.gating_w = empty_param(q_channel, num_head, self.value_dim)
            self.gating_b = empty_param(num_head, self.value_dim)
        self.output_w = empty_param(num_head, self.value_dim, output_dim)
        self.output_b = empty_param(output_dim)

    def forward(self, q_data: torch.Tensor, m_data: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        """q_data, m_data [b, k, c]; q_mask [b, k, 1] -> [b, k, output_dim], in the region's compute dtype.

        The logits and the softmax are fp32 whatever the compute dtype."""
        dtype = compute_dtype()
        p = {name: in_compute_dtype(self, name, getattr(self, name), dtype)
             for name in ("query_w", "key_w", "value_w", "output_w", "output_b")}
        q_data, m_data = q_data.to(dtype), m_data.to(dtype)
        v = torch.matmul(m_data, p["value_w"])  # [b, k, c]
        # utils.mask_mean over the key axis, with its eps.
        q_avg = (q_mask * q_data).sum(1) / (q_mask.sum(1) + 1e-10)
        q = torch.einsum("ba,ahc->bhc", q_avg.to(dtype), p["query_w"]) * self.key_dim ** (-0.5)
        k = torch.matmul(m_data, p["key_w"])
        bias = mask_to_bias(q_mask[:, None, :, 0])
        logits = torch.einsum("bhc,bkc->bhk", q, k).float() + bias
        logits = logits.clamp(-LOGIT_CLIP, LOGIT_CLIP)
        weights = torch.softmax(logits, dim=-1).to(dtype)
        weighted_avg = torch.einsum("bhk,bkc->bhc", weights, v)
        if self.gating:
            gating_w = in_compute_dtype(self, "gating_w", self.gating_w, dtype)
            gating_b = in_compute_dtype(self, "gating_b", self.gating_b, dtype)
            gate = torch.sigmoid(torch.einsum("bqc,chv->bqhv", q_data, gating_w) + gating_b)
            weighted_avg = weighted_avg[:, None] * gate
            return torch.einsum("bqhc,hco->bqo", weighted_avg, p["output_w"]) + p["output_b"]
        out = torch.einsum("bhc,hco->bo", weighted_avg, p["output_w"]) + p["output_b"]
        return out[:, None]
