"""The native kernels (af2cpu_plugin.kernels) against PyTorch's SDPA and pointwise ops.

Skipped, with the reason, where the kernel cannot run (no AVX-512, no
compiler); the engine then uses SDPA, which the other tests cover.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from af2cpu_plugin import kernels
from af2cpu_plugin.engine.policy import RuntimePolicy

usable, why = kernels.status()
pytestmark = pytest.mark.skipif(not usable, reason=why)

BF16_OK = kernels.cpu_supports(torch.bfloat16)


def _inputs(b, h, nq, nk, d, dtype, gen):
    # q, k, v as views of one projection, the way Attention hands them over (row stride > d).
    proj = torch.randn(b * nq, 3 * h * d + 8, generator=gen)
    q = proj[:, : h * d].view(b, nq, h, d).transpose(1, 2)
    kv = torch.randn(b * nk, 2 * h * d, generator=gen)
    k = kv[:, : h * d].view(b, nk, h, d).transpose(1, 2)
    v = kv[:, h * d :].view(b, nk, h, d).transpose(1, 2)
    pair_bias = torch.randn(1, h, nq, nk, generator=gen) * 3
    masked = torch.rand(b, 1, 1, nk, generator=gen) < 0.3
    key_mask = torch.where(masked, -1e9, 0.0)
    return [t.to(dtype) for t in (q, k, v, pair_bias, key_mask + pair_bias)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 4, 37, 29, 32), (2, 2, 5, 100, 16), (1, 8, 133, 133, 32), (2, 4, 64, 16, 16),
                                   (1, 1, 1, 47, 32)])
def test_matches_sdpa(dtype, shape):
    """Same answer as SDPA on the same inputs: tails of rows and keys, both head sizes, broadcast and full masks."""
    if dtype == torch.bfloat16 and not BF16_OK:
        pytest.skip("no avx512_bf16")
    gen = torch.Generator().manual_seed(sum(shape))
    q, k, v, pair_bias, full_bias = _inputs(*shape, dtype, gen)
    for bias in (pair_bias, full_bias):
        exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias.double(), scale=1.0)
        ours = kernels.biased_attention(q, k, v, bias)
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        assert ours.shape == sdpa.shape and ours.dtype == dtype
        # The layout SDPA returns: [b, q, h, d] memory, so the caller's reshape is a view.
        assert ours.transpose(1, 2).is_contiguous()
        err_ours = (ours.double() - exact).abs().max().item()
        err_sdpa = (sdpa.double() - exact).abs().max().item()
        if dtype == torch.float32:
            assert err_ours < 5e-6, err_ours
        else:  # bf16 inputs and weights: no worse than PyTorch's own bf16 kernel
            assert err_ours <= 1.25 * err_sdpa + 1e-3, (err_ours, err_sdpa)


def test_fully_masked_row_is_finite():
    """A row whose keys are all masked gives finite numbers (Attention then applies AF2's uniform rule)."""
    q = torch.randn(1, 2, 20, 32)
    k = torch.randn(1, 2, 24, 32)
    v = torch.randn(1, 2, 24, 32)
    bias = torch.full((1, 1, 1, 24), -1e9)
    out = kernels.biased_attention(q, k, v, bias)
    assert torch.isfinite(out).all()


def test_attention_module_uses_it_and_agrees_with_stock():
    """The Attention primitive under kernels="native" matches kernels="stock" (PyTorch's SDPA)."""
    from af2cpu_plugin.engine.primitives import Attention

    torch.manual_seed(0)
    att = Attention(64, 64, 64, num_head=2)
    with torch.no_grad():
        for p in att.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(3, 40, 64)
    bias = torch.zeros(3, 1, 1, 40)
    bias[1, ..., 5:] = -1e9
    nb = torch.randn(2, 40, 40)
    calls = []
    original = kernels.biased_attention
    try:
        kernels.biased_attention = lambda *a: calls.append(1) or original(*a)
        with torch.inference_mode():
            with RuntimePolicy(kernels="native").active():
                native = att(x, x, bias, nb)
            with RuntimePolicy(kernels="stock").active():
                stock = att(x, x, bias, nb)
    finally:
        kernels.biased_attention = original
    assert calls, "the native kernel was not used"
    torch.testing.assert_close(native, stock, rtol=0, atol=2e-6)


def _run_with_avx2_forced(code: str) -> None:
    """Run ``code`` in a fresh process with the AVX2 paths forced (AF2CPU_FORCE_AVX2=1); it prints ok."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "AF2CPU_FORCE_AVX2": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_avx2_path_matches_sdpa():
    """The fp32 AVX2 path (what a Zen 3 runs), forced on this CPU in a fresh process."""
    code = (
        "import torch, torch.nn.functional as F\n"
        "from af2cpu_plugin import kernels\n"
        "g = torch.Generator().manual_seed(1)\n"
        "for (b, h, nq, nk, d) in [(3, 4, 37, 29, 32), (2, 2, 9, 100, 16), (1, 2, 64, 17, 32)]:\n"
        "    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (nq, nk, nk))\n"
        "    bias = torch.randn(b, h, nq, nk, generator=g) * 3\n"
        "    bias[0, ..., 3:] = -1e9\n"
        "    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias.double(), scale=1.0)\n"
        "    err = (kernels.biased_attention(q, k, v, bias).double() - ref).abs().max().item()\n"
        "    assert err < 5e-6, (b, h, nq, nk, d, err)\n"
        "print('ok')\n"
    )
    _run_with_avx2_forced(code)


@pytest.mark.skipif(not BF16_OK, reason="no avx512_bf16")
@pytest.mark.parametrize("shape", [(7, 5, 128), (3, 256), (1, 64), (0, 128), "transposed"])
def test_layer_norm_to_bf16_matches_layer_norm_then_cast(shape):
    gen = torch.Generator().manual_seed(len(shape))
    if shape == "transposed":  # the ending-node triangle attention's view of the pair, read in place
        x = (torch.randn(9, 6, 128, generator=gen) * 3 + 1).transpose(0, 1)
        shape = tuple(x.shape)
    else:
        x = torch.randn(*shape, generator=gen) * 3 + 1
    w = torch.randn(shape[-1], generator=gen)
    b = torch.randn(shape[-1], generator=gen)
    ours = kernels.layer_norm_to_bf16(x, w, b, 1e-5)
    ref = F.layer_norm(x.double(), (shape[-1],), w.double(), b.double(), 1e-5)
    stock = F.layer_norm(x, (shape[-1],), w, b, 1e-5).to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and ours.shape == x.shape and ours.is_contiguous()
    if x.numel():
        # the same bf16 rounding of (almost) the same fp32 value: at most one bf16 ulp apart from the stock path
        assert (ours.double() - ref).abs().max() <= (stock.double() - ref).abs().max() * 1.01 + 1e-6
        assert ((ours.float() - stock.float()).abs() <= stock.float().abs() * 2 ** -7 + 1e-6).all()


@pytest.mark.skipif(not BF16_OK, reason="no avx512_bf16")
@pytest.mark.parametrize("shape", [(128, 37, 41), (16, 16), (32, 5), (128, 0)])
def test_layer_norm_channel_major_matches_the_permuted_layer_norm(shape):
    """Channel-major bf16 in, [..., C] out: the stock permute + layer_norm + cast, to one bf16 ulp; position tails."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=gen) * 3 + 1).to(torch.bfloat16)
    w = torch.randn(shape[0], generator=gen)
    b = torch.randn(shape[0], generator=gen)
    ours = kernels.layer_norm_channel_major_to_bf16(x, w, b, 1e-5)
    moved = x.movedim(0, -1)
    stock = F.layer_norm(moved.float(), (shape[0],), w, b, 1e-5).to(torch.bfloat16)
    ref = F.layer_norm(moved.double(), (shape[0],), w.double(), b.double(), 1e-5)
    assert ours.dtype == torch.bfloat16 and ours.shape == moved.shape
    if x.numel():
        assert (ours.double() - ref).abs().max() <= (stock.double() - ref).abs().max() * 1.01 + 1e-6
        assert ((ours.float() - stock.float()).abs() <= stock.float().abs() * 2 ** -7 + 1e-6).all()


def _gate_reference(q, k, v, bias, gate):
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias.double(), scale=1.0)
    return exact * torch.sigmoid(gate.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 4, 37, 29, 32), (2, 2, 9, 100, 16), (2, 8, 21, 59, 8)])
def test_gate_is_applied_in_the_kernel(dtype, shape):
    """out * sigmoid(gate), the gate a strided view laid out like the output; head size 8 (padded to 16 but on
    the AVX-512 fp32 path, which runs it as it is)."""
    if dtype == torch.bfloat16 and not BF16_OK:
        pytest.skip("no avx512_bf16")
    b, h, nq, nk, d = shape
    gen = torch.Generator().manual_seed(nq)
    q, k, v, _, bias = _inputs(*shape, dtype, gen)
    gate = (torch.randn(b * nq, h * d + 3, generator=gen) * 4)[:, 3:].view(b, nq, h, d).transpose(1, 2).to(dtype)
    ours = kernels.biased_attention(q, k, v, bias, gate)
    ref = _gate_reference(q, k, v, bias, gate)
    assert ours.shape == ref.shape and ours.dtype == dtype
    err = (ours.double() - ref).abs().max().item()
    if dtype == torch.float32:
        assert err < 5e-6, err
    else:  # no worse than SDPA, then the sigmoid and product, each rounded to bf16
        stock = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0) * torch.sigmoid(gate)
        assert err <= 1.25 * (stock.double() - ref).abs().max().item() + 1e-3


def test_avx2_gate_and_pointwise():
    """The AVX2 paths of the gate and of gated_rows_ (what a Zen 3 runs), forced in a fresh process."""
    code = (
        "import torch, torch.nn.functional as F\n"
        "from af2cpu_plugin import kernels\n"
        "g = torch.Generator().manual_seed(2)\n"
        "q, k, v = (torch.randn(2, 4, n, 32, generator=g) for n in (13, 40, 40))\n"
        "bias = torch.randn(2, 4, 13, 40, generator=g)\n"
        "gate = torch.randn(2, 4, 13, 32, generator=g) * 4\n"
        "ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias.double(), scale=1.0)\n"
        "err = (kernels.biased_attention(q, k, v, bias, gate).double() - ref * torch.sigmoid(gate.double())).abs().max()\n"
        "assert err < 5e-6, err\n"
        "x = torch.randn(6, 1003, generator=g) * 4\n"
        "bias = torch.randn(6, generator=g)\n"
        "ref = (x[:3].double() + bias[:3, None].double()) * torch.sigmoid(x[3:].double() + bias[3:, None].double())\n"
        "err = (kernels.gated_rows_(x, bias, None).double() - ref).abs().max()\n"
        "assert err < 1e-5, err\n"
        "print('ok')\n"
    )
    _run_with_avx2_forced(code)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("rows, positions", [(4, 1003), (256, 4096 + 7), (2, 5)])
def test_gated_rows_matches_the_three_passes(dtype, with_mask, rows, positions):
    """(x[r] + b[r]) * mask * sigmoid(x[n+r] + b[n+r]) in one pass, against PyTorch's passes; tails included."""
    if dtype == torch.bfloat16 and not BF16_OK:
        pytest.skip("no avx512_bf16")
    from af2cpu_plugin.engine import primitives

    gen = torch.Generator().manual_seed(rows + positions)
    x = (torch.randn(rows, positions, generator=gen) * 4).to(dtype)
    bias = torch.randn(rows, generator=gen)
    mask = (torch.rand(positions, generator=gen) > 0.2).float() if with_mask else None
    n = rows // 2
    exact = (x[:n].double() + bias[:n, None].double()) * torch.sigmoid(x[n:].double() + bias[n:, None].double())
    if mask is not None:
        exact = exact * mask.double()
    with RuntimePolicy(kernels="stock").active():
        stock = primitives.gated_rows_(x.clone(), bias, mask)
    with RuntimePolicy(kernels="native").active():
        ours = primitives.gated_rows_(x.clone(), bias, mask)
    assert ours.shape == (n, positions) and ours.dtype == dtype
    err, err_stock = ((t.double() - exact).abs().max().item() for t in (ours, stock))
    if dtype == torch.float32:
        assert err <= 4 * 2 ** -23 * exact.abs().max().item(), (err, err_stock)
    else:  # one rounding instead of three
        assert err <= err_stock + 1e-6, (err, err_stock)


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channel_major"])
@pytest.mark.parametrize("shape", [(7, 9, 128), (3, 5, 8), (20, 21, 64)])
def test_fp32_layer_norm_reads_any_layout(layout, shape):
    """The fp32 LayerNorms (strided rows, channel-major columns with a tail of positions) against PyTorch's on the
    contiguous copy: a few fp32 ulps of the output's scale."""
    gen = torch.Generator().manual_seed(sum(shape))
    c = shape[-1]
    w, b = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    x = torch.randn(*shape, generator=gen) * 3 + 1
    if layout == "transposed":
        x = x.transpose(0, 1)
    if layout == "channel_major":
        cm = x.movedim(-1, 0).contiguous()
        ours = kernels.layer_norm_channel_major_fp32(cm, w, b, 1e-5)
    else:
        ours = kernels.layer_norm_fp32(x, w, b, 1e-5)
    ref = F.layer_norm(x.contiguous(), (c,), w, b, 1e-5)
    assert ours.shape == ref.shape and ours.is_contiguous() and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=16 * 2 ** -23 * ref.abs().max().item())


@pytest.mark.parametrize("heads", [4, 8])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shape", [(7, 9, 128), (3, 5, 8), (50, 21, 64)])
def test_layer_norm_projected_matches_layer_norm_then_projection(heads, transposed, shape):
    """LayerNorm and the pair-bias projection in one pass (strided rows, a tail of rows past the fours): against the
    fp64 reference, no worse than the fp32 LayerNorm followed by the GEMM it replaces. Also the primitive's
    dispatch: the native path and the stock one agree."""
    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.engine.primitives import LayerNorm

    gen = torch.Generator().manual_seed(sum(shape) + heads)
    c = shape[-1]
    w, b, proj = torch.randn(c, generator=gen), torch.randn(c, generator=gen), torch.randn(heads, c, generator=gen)
    x = torch.randn(*shape, generator=gen) * 3 + 1
    if transposed:
        x = x.transpose(0, 1)
    ours = kernels.layer_norm_project_fp32(x, w, b, proj, 1e-5)
    exact = proj.double() @ F.layer_norm(x.double(), (c,), w.double(), b.double(), 1e-5).reshape(-1, c).T
    stock = proj @ F.layer_norm(x.contiguous(), (c,), w, b, 1e-5).reshape(-1, c).T
    assert ours.shape == (heads, x.numel() // c) and ours.is_contiguous()
    err, err_stock = (ours - exact).abs().max().item(), (stock - exact).abs().max().item()
    assert err <= max(2 * err_stock, 8 * 2 ** -23 * exact.abs().max().item()), (err, err_stock)

    norm = LayerNorm(c)
    norm.scale.data, norm.offset.data = w, b
    with RuntimePolicy(precision="fp32", kernels="native").active():
        native = norm.forward_projected(x, proj)
    with RuntimePolicy(precision="fp32", kernels="stock").active():
        plain = norm.forward_projected(x, proj)
    torch.testing.assert_close(native, ours, rtol=0, atol=0)
    torch.testing.assert_close(plain, stock, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows, channels", [(1000, 128), (3, 8), (257, 64)])
def test_gated_add_matches_the_passes_it_replaces(rows, channels):
    """stream += x * sigmoid(gate) in one pass, on a strided stream and gate (views of wider tensors): within a
    couple of fp32 ulps of the float64 answer, and the primitive's GEMMs give the fused path's answer."""
    from af2cpu_plugin.engine import primitives

    gen = torch.Generator().manual_seed(rows)
    base = torch.randn(rows, channels + 8, generator=gen)
    stream = base[:, :channels]
    x = torch.randn(rows, channels, generator=gen) * 3
    gate = (torch.randn(rows, 2 * channels, generator=gen) * 6)[:, channels:]
    exact = stream.double() + x.double() * torch.sigmoid(gate.double())
    expected_tail = base[:, channels:].clone()
    out = kernels.gated_add_(stream, x, gate)
    assert out.data_ptr() == stream.data_ptr()
    assert ((stream.double() - exact).abs() <= 4 * 2 ** -23 * (exact.abs() + x.double().abs()) + 1e-30).all()
    assert torch.equal(base[:, channels:], expected_tail)  # nothing outside the view is written

    update, gating = primitives.Linear(channels, channels), primitives.Linear(channels, channels)
    for lin in (update, gating):
        for p in lin.parameters():
            p.data.normal_(generator=gen)
    acts = torch.randn(rows, channels, generator=gen)
    results = {}
    for name in ("native", "stock"):
        s = base[:, :channels].clone()
        with torch.no_grad(), RuntimePolicy(kernels=name, precision="fp32").active():
            primitives.gated_residual_add_(s, update, acts, gating, acts)
        results[name] = s
    torch.testing.assert_close(results["native"], results["stock"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not BF16_OK, reason="no avx512_bf16")
@pytest.mark.parametrize("transposed", [False, True])
def test_layer_norm_to_bf16_reads_a_bf16_pair(transposed):
    """The bf16 pair (pair_storage "bf16") normalised in one pass: what LayerNorm of its fp32 values gives,
    rounded to bf16 (one bf16 ulp at most, from the order of the fp32 sums)."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(9, 6, 128, generator=gen) * 3 + 1).to(torch.bfloat16)
    x = x.transpose(0, 1) if transposed else x
    w, b = torch.randn(128, generator=gen), torch.randn(128, generator=gen)
    ours = kernels.layer_norm_to_bf16(x, w, b, 1e-5)
    stock = F.layer_norm(x.float(), (128,), w, b, 1e-5).to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and ours.shape == x.shape and ours.is_contiguous()
    assert ((ours.float() - stock.float()).abs() <= stock.float().abs() * 2 ** -7 + 1e-6).all()


@pytest.mark.skipif(not BF16_OK, reason="no avx512_bf16")
@pytest.mark.parametrize("update_dtype", [torch.bfloat16, torch.float32])
def test_add_into_a_bf16_stream_rounds_once_as_torch(update_dtype):
    """bf16 pair += bf16 or fp32 update (strided views of either): bit-identical to PyTorch's add."""
    from af2cpu_plugin.engine import primitives

    gen = torch.Generator().manual_seed(4)
    for acc in (torch.randn(9, 7, 128, generator=gen).bfloat16(),
                torch.randn(7, 9, 128, generator=gen).bfloat16().transpose(0, 1)):
        update = torch.randn(7, 9, 128, generator=gen).to(update_dtype).transpose(0, 1)
        expected = acc.clone().add_(update)
        with RuntimePolicy(kernels="native").active():
            out = primitives.residual_add_(acc, update)
        assert out is acc and acc.dtype == torch.bfloat16
        assert torch.equal(acc, expected)


@pytest.mark.skipif(not BF16_OK, reason="no avx512_bf16")
def test_add_into_adds_a_bf16_update_exactly():
    """fp32 stream += bf16 update (strided: transposed views of either) is the same as adding its fp32 copy."""
    from af2cpu_plugin.engine import primitives

    for acc in (torch.randn(9, 7, 128), torch.randn(7, 9, 128).transpose(0, 1)):
        update = torch.randn(7, 9, 128).to(torch.bfloat16).transpose(0, 1)
        expected = acc + update.float()
        with RuntimePolicy(kernels="native").active():
            out = primitives.residual_add_(acc, update)
        assert out is acc
        torch.testing.assert_close(acc, expected, rtol=0, atol=0)


def test_matmul_2d_matches_matmul():
    from af2cpu_plugin.engine.primitives import matmul_2d

    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(70, 300, generator=gen), torch.randn(300, 50, generator=gen)
    torch.testing.assert_close(matmul_2d(a, b), a @ b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k_block", [0, 64])
@pytest.mark.parametrize("inference", [True, False])
def test_channel_bmm_matches_bmm(k_block, inference):
    """A channel's GEMM per thread, on row-major and transposed (incoming) operands, blocked or not,
    in and outside inference mode (the workers take the caller's mode)."""
    gen = torch.Generator().manual_seed(5)
    left, right = torch.randn(6, 150, 150, generator=gen), torch.randn(6, 150, 150, generator=gen)
    with torch.inference_mode(inference):
        for a, b in ((left, right), (right.transpose(1, 2), left.transpose(1, 2))):
            out = kernels.channel_bmm_nt(a, b, k_block)
            torch.testing.assert_close(out, torch.bmm(a, b.transpose(1, 2)), rtol=1e-5, atol=1e-4)
    assert not kernels.can_channel_bmm(left.bfloat16())  # bf16 stays on torch.bmm


def test_channel_bmm_is_not_used_on_avx2(monkeypatch):
    """With oneDNN held to AVX2 the per-channel GEMMs lost to MKL's bmm: AVX2-only CPUs keep torch.bmm."""
    monkeypatch.setenv("AF2CPU_FORCE_AVX2", "1")
    assert not kernels.can_channel_bmm(torch.zeros(2, 3, 3))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("equation", ["ikc,jkc->ijc", "kjc,kic->ijc"])
def test_triangle_multiplication_native_agrees_with_stock(equation, precision, monkeypatch):
    """The fused gate pass, the sigmoid in the GEMM's epilogue and (bf16) the channel-major centre LayerNorm
    change nothing beyond rounding."""
    import ml_collections

    from af2cpu_plugin.engine.policy import trunk_precision
    from af2cpu_plugin.engine.triangle_multiplication import TriangleMultiplication

    if precision == "bf16" and not BF16_OK:
        pytest.skip("no avx512_bf16")

    config = ml_collections.ConfigDict({"equation": equation, "num_intermediate_channel": 32,
                                        "fuse_projection_weights": True})
    torch.manual_seed(4)
    tri = TriangleMultiplication(config, 32)
    with torch.no_grad():
        for p in tri.parameters():
            p.normal_(0, 0.2)
    pair = torch.randn(23, 23, 32)
    mask = torch.ones(23, 23)
    mask[20:] = 0
    calls = []
    channel_major = kernels.layer_norm_channel_major_to_bf16
    monkeypatch.setattr(kernels, "layer_norm_channel_major_to_bf16", lambda *a: calls.append(1) or channel_major(*a))
    with torch.inference_mode():
        with RuntimePolicy(kernels="native", precision=precision).active(), trunk_precision():
            native = tri(pair, mask).float()
    assert len(calls) == (precision == "bf16")
    with torch.inference_mode():
        with RuntimePolicy(kernels="stock", precision=precision).active(), trunk_precision():
            stock = tri(pair, mask).float()
    tol = 1e-5 if precision == "fp32" else 3e-2  # bf16: a few ulps of 2^-8 where roundings differ
    torch.testing.assert_close(native, stock, rtol=tol, atol=tol)


_BLOCK_CACHE_SCRIPT = r"""
import torch
from af2cpu_plugin import kernels

assert kernels.install_block_cache(huge_pages=True)
MiB = 1 << 20
small = torch.ones(1000)                      # under 1 MiB: malloc's, not the cache's
a = torch.full((4 * MiB // 4,), 7.0)          # 4 MiB
s = kernels.block_cache_stats()
assert s["live_bytes"] == 4 * MiB and s["misses"] == 1 and s["hits"] == 0, s
address = a.data_ptr()
del a
assert kernels.block_cache_stats()["cached_bytes"] == 4 * MiB
b = torch.zeros(4 * MiB // 4 - 100)           # a little smaller: the cached block serves it
s = kernels.block_cache_stats()
assert b.data_ptr() == address and s["hits"] == 1 and s["cached_bytes"] == 0, s
assert float(b.sum()) == 0.0                  # served memory is overwritten by the op, never stale
del b
# Many blocks of one size, then another size: the footprint stays near the high-water mark of live memory.
blocks = [torch.empty(8 * MiB // 4) for _ in range(10)]
high = kernels.block_cache_stats()["peak_live_bytes"]
del blocks
for _ in range(20):
    c = torch.empty(6 * MiB // 4)
    c.fill_(1.0)
    del c
s = kernels.block_cache_stats()
assert s["peak_mapped_bytes"] <= high * 5 // 4 + 6 * MiB, s
# A measurement window: its peak starts from the live bytes at the reset, the peak since start stays.
kernels.block_cache_reset_window_peak()
assert kernels.block_cache_stats()["window_peak_bytes"] == kernels.block_cache_stats()["live_bytes"]
d = torch.empty(2 * MiB // 4)
del d
w = kernels.block_cache_stats()
assert w["window_peak_bytes"] == w["live_bytes"] + 2 * MiB and w["peak_live_bytes"] == high, w
# Values survive round trips through the cache (torch ops on cached blocks).
x = torch.randn(512, 1024)
y = (x @ x.t()).sum()
torch.testing.assert_close(y, (x.double() @ x.double().t()).sum().float(), rtol=1e-4, atol=1e-1)
print("ok", s)
"""


def test_block_cache_reuses_blocks_and_bounds_its_footprint():
    """The caching allocator in a fresh process: hits, a tolerance for smaller requests, a bounded footprint."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _BLOCK_CACHE_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


def test_channel_products_of_short_chains_stay_on_bmm(monkeypatch):
    """Below CHANNEL_BMM_MIN_ROWS a oneDNN call per channel costs more than it computes (0.9-1.2 against
    0.4 ms at 59 residues on a Zen 5): the products go through torch.bmm; longer ones through the kernel."""
    from af2cpu_plugin.engine import primitives
    from af2cpu_plugin.engine.policy import RuntimePolicy

    calls = []
    monkeypatch.setattr(kernels, "channel_bmm_nt", lambda a, b, k_block: calls.append(a.shape[1]) or torch.bmm(
        a, b.transpose(1, 2)))
    monkeypatch.setattr(kernels, "can_channel_bmm", lambda a: True)
    gen = torch.Generator().manual_seed(6)
    with RuntimePolicy(kernels="native").active():
        for rows in (primitives.CHANNEL_BMM_MIN_ROWS - 1, primitives.CHANNEL_BMM_MIN_ROWS):
            a, b = torch.randn(2, rows, 8, generator=gen), torch.randn(2, rows, 8, generator=gen)
            torch.testing.assert_close(primitives.channel_products(a, b), torch.bmm(a, b.transpose(1, 2)))
    assert calls == [primitives.CHANNEL_BMM_MIN_ROWS]
