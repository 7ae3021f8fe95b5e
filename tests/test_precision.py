"""``--precision {auto,fp32,bf16}``: what auto resolves to, what is refused, where bf16 applies.

The bf16 fidelity against JAX is in test_runner_parity.py; the full-depth
numbers come from ``bench/parity.py --precision bf16``.
"""

from __future__ import annotations

import argparse
import os

import pytest
import torch

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from af2cpu_plugin import cpu, malloc  # noqa: E402
from af2cpu_plugin.engine.policy import RuntimePolicy, compute_dtype, trunk_precision  # noqa: E402
from af2cpu_plugin.engine.primitives import LayerNorm, Linear  # noqa: E402
from af2cpu_plugin.hooks import cpu_backend  # noqa: E402

ZEN5 = cpu.CpuInfo("AMD EPYC (Zen 5)", "AVX512", frozenset({"avx2", "avx512f", "avx512_bf16"}), 2)
ZEN3 = cpu.CpuInfo("AMD EPYC (Zen 3)", "AVX2", frozenset({"avx2", "fma"}), 2)
SAPPHIRE = cpu.CpuInfo("Intel Xeon", "AVX512", frozenset({"avx512f", "amx_bf16", "amx_tile"}), 2)


@pytest.mark.parametrize("info, expected", [(ZEN5, "bf16"), (ZEN3, "fp32"), (SAPPHIRE, "bf16")])
def test_auto_picks_bf16_only_with_native_bf16(info, expected):
    assert cpu.resolve_precision("auto", info) == expected
    assert cpu.resolve_precision("fp32", info) == "fp32"
    assert cpu.resolve_precision("bf16", info) == "bf16"


def test_unknown_precision_names_the_valid_ones():
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        cpu.resolve_precision("fp16")
    with pytest.raises(ValueError, match="fp32, bf16"):
        RuntimePolicy(precision="auto")


def test_this_cpu_is_described():
    info = cpu.cpu_info()
    assert info.capability == torch.backends.cpu.get_cpu_capability()
    assert info.cpus >= 1 and info.model
    assert ("native bf16: yes" if info.native_bf16 else "native bf16: no") in info.describe()


def _args(precision):
    return argparse.Namespace(precision=precision, threads=1, subbatch_size=None, use_gpu_relax=False,
                              num_ensemble=1, use_dropout=False, use_fast_kernels=False, model_type="auto")


def test_bf16_refused_in_one_line_without_native_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_info", lambda: ZEN3)
    refusal = cpu_backend.af2cpu_check_request(backend="cpu", args=_args("bf16"), model_type="alphafold2_ptm",
                                               is_complex=False)
    assert refusal and "\n" not in refusal
    assert "--precision bf16" in refusal and "100x slower" in refusal and " — use --precision auto or fp32" in refusal
    assert cpu_backend.af2cpu_defaults(backend="cpu")["precision"] == "fp32"


def test_bf16_served_with_native_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_info", lambda: ZEN5)
    assert cpu_backend.af2cpu_check_request(backend="cpu", args=_args("bf16"), model_type="alphafold2_ptm",
                                            is_complex=False) is None
    assert cpu_backend.af2cpu_defaults(backend="cpu")["precision"] == "bf16"
    assert cpu_backend.af2cpu_run_kwargs(backend="cpu", args=_args("bf16"))["use_bfloat16"] is True


def test_auto_is_the_backend_default(monkeypatch):
    """``--precision auto`` (or nothing) becomes the backend's resolved precision before the run."""
    from af2cpu_plugin import cli
    from af2cpu_plugin.hooks.manager import get_plugin_manager

    monkeypatch.setattr(cpu, "cpu_info", lambda: ZEN3)
    pm = get_plugin_manager()
    for backend, expected in (("cpu", "fp32"), ("jax", "bf16")):
        args = argparse.Namespace(backend=backend, precision="auto", threads=None, input="/nonexistent")
        with pytest.raises(Exception, match="not found"):
            cli._prepare_request(pm, args)  # stops at the missing input, after the defaults
        assert args.precision == expected, backend


def test_bf16_region_is_the_trunk_only():
    """Outside trunk_precision() (structure module, heads) a bf16 policy still computes in fp32."""
    lin = Linear(8, 4)
    lin.weights.data.normal_()
    lin.bias.data.normal_()
    norm = LayerNorm(8)
    norm.scale.data.fill_(1.0)
    norm.offset.data.zero_()
    x = torch.randn(3, 8)
    with torch.inference_mode(), RuntimePolicy(precision="bf16").active():
        assert compute_dtype() == torch.float32
        assert lin(x).dtype == torch.float32 and norm(x).dtype == torch.float32
        with trunk_precision():
            assert compute_dtype() == torch.bfloat16
            y = lin(norm(x))
            assert norm(x).dtype == torch.bfloat16 and y.dtype == torch.bfloat16
        assert compute_dtype() == torch.float32
        with RuntimePolicy(precision="fp32").active(), trunk_precision():
            assert compute_dtype() == torch.float32
            y32 = lin(norm(x))
    torch.testing.assert_close(y.float(), y32, rtol=2e-2, atol=2e-2)


def test_malloc_settings_apply_once_and_yield_to_the_environment(monkeypatch):
    import ctypes.util

    if not ctypes.util.find_library("c") or os.uname().sysname != "Linux":
        pytest.skip("glibc only")
    monkeypatch.setattr(malloc, "_done", False)
    calls = []

    class FakeLibc:
        def __init__(self):
            self.mallopt = lambda p, v: calls.append((p, v)) or 1

    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert malloc.tune()
    assert calls == [(malloc.M_TRIM_THRESHOLD, malloc.TRIM_THRESHOLD_BYTES)]
    assert malloc.tune() and len(calls) == 1  # once per process


def test_bf16_pair_is_read_in_fp32_slice_by_slice():
    """The bf16 pair handed to the fp32 structure module and heads: LayerNorm and Linear compute on its fp32
    values (not LayerNorm in bf16), in row slices (the policy's slice_bytes), as if cast whole first."""
    gen = torch.Generator().manual_seed(5)
    lin = Linear(16, 7)
    lin.weights.data.normal_(generator=gen)
    lin.bias.data.normal_(generator=gen)
    norm = LayerNorm(16)
    norm.scale.data.normal_(generator=gen)
    norm.offset.data.normal_(generator=gen)
    pair = torch.randn(40, 40, 16, generator=gen).to(torch.bfloat16)
    with torch.inference_mode(), RuntimePolicy(precision="bf16", slice_bytes=40 * 16 * 2 * 3).active():
        normed, logits = norm(pair), lin(pair)
        whole_normed, whole_logits = norm(pair.float()), lin(pair.float())
    assert normed.dtype == logits.dtype == torch.float32
    assert torch.equal(normed, whole_normed)
    torch.testing.assert_close(logits, whole_logits, rtol=1e-6, atol=1e-6)


def test_pair_storage_needs_bf16_precision():
    with pytest.raises(ValueError, match="bf16 precision"):
        RuntimePolicy(precision="fp32", pair_storage="bf16")
    with pytest.raises(ValueError, match="pair storage"):
        RuntimePolicy(precision="bf16", pair_storage="fp16")
