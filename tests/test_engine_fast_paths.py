"""The engine's faster execution paths give AF2's numbers.

Covers what the reduced-size oracle tests would not reach on their own:
fully masked attention rows with large logits (AF2's logit clip makes them
uniform), derived weight layouts following rebound or edited params, long
fp32 reductions and the outer product mean's single-sequence shortcut.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest
import torch

from af2cpu_plugin.engine.params import bind_params, expected_params
from af2cpu_plugin.engine.outer_product_mean import _sum_over_sequences
from af2cpu_plugin.engine.policy import RuntimePolicy
from af2cpu_plugin.engine.primitives import (FP32_K_BLOCK, LOGIT_CLIP, Attention, KeyStream, Linear, mask_to_bias,
                                             matmul_2d)


def _random_params(module, root, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        k: (scale * rng.normal(size=s) / np.sqrt(s[0] if len(s) > 1 else 1)).astype(np.float32)
        for k, s in expected_params(module, root=root).items()
    }


def _reference_attention(p, q_data, m_data, bias, nonbatched_bias, key_dim):
    """modules.Attention (non-Pallas branch) in float64 with its logit clip."""
    d = {k.split("//")[1]: torch.from_numpy(v).double() for k, v in p.items()}
    q_data, m_data, bias, nonbatched_bias = (x.double() for x in (q_data, m_data, bias, nonbatched_bias))
    q = torch.einsum("bqa,ahc->bqhc", q_data, d["query_w"]) * key_dim ** (-0.5)
    k = torch.einsum("bka,ahc->bkhc", m_data, d["key_w"])
    v = torch.einsum("bka,ahc->bkhc", m_data, d["value_w"])
    logits = torch.einsum("bqhc,bkhc->bhqk", q, k) + bias + nonbatched_bias[None]
    weights = torch.softmax(logits.clamp(-LOGIT_CLIP, LOGIT_CLIP), dim=-1)
    avg = torch.einsum("bhqk,bkhc->bqhc", weights, v)
    gate = torch.sigmoid(torch.einsum("bqc,chv->bqhv", q_data, d["gating_w"]) + d["gating_b"])
    return torch.einsum("bqhc,hco->bqo", avg * gate, d["output_w"]) + d["output_b"]


def test_attention_fully_masked_rows_are_uniform():
    """A row whose keys are all masked gets AF2's uniform weights even when q·k and
    the pair bias are large (an unclipped softmax would follow them)."""
    b, n, c, h = 4, 9, 16, 2
    att = Attention(c, c, c, h).eval()
    p = _random_params(att, "attention", scale=3.0)
    bind_params(att, p, root="attention")
    gen = torch.Generator().manual_seed(0)
    x = 4.0 * torch.randn(b, n, c, generator=gen)
    mask = torch.ones(b, n)
    mask[0] = 0.0  # every key of batch row 0 masked
    mask[1, -3:] = 0.0  # some keys masked
    bias = mask_to_bias(mask)[:, None, None, :]
    nonbatched = 50.0 * torch.randn(h, n, n, generator=gen)
    with torch.inference_mode():
        ours = att(x, x, bias, nonbatched)
        unmasked = att(x, x, torch.zeros_like(bias), nonbatched)  # the broadcast-mask path
    ref = _reference_attention(p, x, x, bias, nonbatched, c // h)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    ref_unmasked = _reference_attention(p, x, x, torch.zeros_like(bias), nonbatched, c // h)
    torch.testing.assert_close(unmasked.double(), ref_unmasked, rtol=0, atol=1e-4 * float(ref_unmasked.abs().max()))


def test_derived_layouts_follow_params():
    """Cached kernel layouts are rebuilt after bind_params, .data assignment and in-place edits."""
    lin = Linear(6, 5)
    x = torch.randn(3, 6)

    def expect():
        return x @ lin.weights.detach() + lin.bias.detach()

    bind_params(lin, _random_params(lin, "lin", seed=1), root="lin")
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), expect())
    bind_params(lin, _random_params(lin, "lin", seed=2), root="lin")
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), expect())
    lin.weights.data = torch.randn(6, 5)
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), expect())
    with torch.no_grad():
        lin.bias.add_(1.0)
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), expect())



def test_attention_with_separate_memory():
    """q_data and m_data differ (template pointwise attention): its own key/value projection."""
    b, nq, nk, c, h = 5, 1, 4, 16, 2
    att = Attention(c, c, c, h).eval()
    p = _random_params(att, "attention", seed=3)
    bind_params(att, p, root="attention")
    gen = torch.Generator().manual_seed(1)
    q_data = torch.randn(b, nq, c, generator=gen)
    m_data = torch.randn(b, nk, c, generator=gen)
    mask = torch.ones(nk)
    mask[-1] = 0.0
    bias = mask_to_bias(mask)[None, None, None, :]
    with torch.inference_mode():
        ours = att(q_data, m_data, bias)
    ref = _reference_attention(p, q_data, m_data, bias, torch.zeros(h, nq, nk), c // h)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("slice_bytes", [None, 200], ids=["whole", "row-slices"])
def test_attention_over_streamed_key_blocks(slice_bytes):
    """KeyStream (the template attention, one template at a time): keys given one block at a time, in any
    order, with a running softmax give what attending to all of them at once gives, to rounding; with
    gating, a masked key and logits large enough that a later block raises the running max."""
    b, nq, c, h = 6, 1, 16, 2
    att = Attention(c, c, c, h).eval()
    p = _random_params(att, "attention", seed=4, scale=3.0)
    bind_params(att, p, root="attention")
    gen = torch.Generator().manual_seed(2)
    q_data = 3.0 * torch.randn(b, nq, c, generator=gen)
    blocks = [3.0 * torch.randn(b, 1, c, generator=gen) for _ in range(3)] + [torch.randn(b, 2, c, generator=gen)]
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    bias = mask_to_bias(mask)[None, None, None, :]
    ref = _reference_attention(p, q_data, torch.cat(blocks, 1), bias, torch.zeros(h, nq, 5), c // h)
    widths = [0, 1, 2, 3, 5]
    with torch.inference_mode(), RuntimePolicy(slice_bytes=slice_bytes).active():
        stream = KeyStream(att, q_data)
        for i in (3, 0, 2, 1):  # any order
            stream.add(blocks[i], bias[..., widths[i] : widths[i + 1]])
        ours = stream.result()
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_long_fp32_reduction_is_as_accurate_as_mkl():
    """matmul_2d sums a long inner axis (the extra MSA's 5,120 sequences) in blocks.

    oneDNN's fp32 GEMM alone runs each output's sum as one chain: about twice
    MKL's error at this length (3.1e-5 against 1.5e-5 mean), which moved the
    deep-MSA parity case past JAX's floor. Blocked: 1.7e-5.
    """
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 5120, generator=g), torch.randn(5120, 256, generator=g)
    ref = a.double() @ b.double()

    def mean_error(x):
        return float((x.double() - ref).abs().mean())

    assert mean_error(matmul_2d(a, b)) < 1.3 * mean_error(torch.matmul(a, b))
    short = a[:, :FP32_K_BLOCK].contiguous()  # one block: the plain GEMM
    torch.testing.assert_close(matmul_2d(short, b[:FP32_K_BLOCK]), short @ b[:FP32_K_BLOCK], rtol=1e-5, atol=1e-4)


def test_outer_products_over_sequences():
    """The deep-MSA order: outer products summed over sequences, in the output projection's layout."""
    g = torch.Generator().manual_seed(2)
    for s in (1, 3, 300):
        left_t, right = torch.randn(5, s, 4, generator=g), torch.randn(s, 7, 4, generator=g)
        ref = torch.einsum("isa,sjb->ijab", left_t.double(), right.double()).reshape(35, 16)
        torch.testing.assert_close(_sum_over_sequences(left_t, right).double(), ref, rtol=1e-5, atol=1e-4)


def _mapping_rss_kib(path) -> int:
    """This process's resident KiB of the mappings of ``path`` (/proc/self/smaps)."""
    rss, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if "-" in line.split(" ", 1)[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return rss


def _linear_mapped_from_safetensors(tmp_path, before_binding=lambda flat: None):
    """A Linear(512, 1024) bound from a saved, memory-mapped safetensors file: (layer, loaded params, path)."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "w.safetensors"
    save_file({"weights": torch.randn(512, 1024), "bias": torch.randn(1024)}, str(path))
    flat = load_file(str(path))
    before_binding(flat)
    lin = Linear(512, 1024)
    bind_params(lin, {"linear": flat}, root="linear")
    return lin, flat, path


def test_weights_mapped_from_safetensors_leave_rss_once_derived(tmp_path):
    """A Linear bound from a memory-mapped safetensors file: deriving its kernel layout hands the
    original's pages back (weight_pages), and the layer still computes the same, before and after."""
    import sys

    import re

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/smaps and /proc/self/pagemap (Linux) are needed")
    lin, flat, path = _linear_mapped_from_safetensors(tmp_path)
    x = torch.randn(3, 512)
    expected = x @ flat["weights"] + flat["bias"]  # touches every page of the original
    before = _mapping_rss_kib(path)
    assert before >= 2048 - 8  # the 2 MiB weight is resident
    with RuntimePolicy(precision="fp32").active():
        y = lin(x)  # derives [out, in], then advises the original's pages away
        after = _mapping_rss_kib(path)
        assert after < before - 1024, (before, after)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(lin.weights, flat["weights"], rtol=0, atol=0)  # re-read from the page cache


def test_loaded_params_leave_rss_after_their_checksum(tmp_path):
    """load_params reads every byte of the converted file to check its checksum; those pages go back
    right after (ColabFold loads all five models' params up front), and the values read the same."""
    import sys

    from af2cpu_plugin import converters

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/smaps and /proc/self/pagemap (Linux) are needed")
    weights = np.random.default_rng(0).normal(size=(512, 1024)).astype(np.float32)  # 2 MiB
    npz = tmp_path / "params" / "params_model_1_ptm.npz"
    npz.parent.mkdir()
    np.savez(npz, **{"alphafold/alphafold_iteration/evoformer/preprocess_1d//weights": weights})
    flat = converters.load_params(npz, lambda m: None)
    (path,) = npz.parent.glob("*.safetensors")
    assert _mapping_rss_kib(path) < 64, _mapping_rss_kib(path)
    np.testing.assert_array_equal(flat["alphafold/alphafold_iteration/evoformer/preprocess_1d//weights"].numpy(),
                                  weights)


def test_weights_written_in_place_keep_their_values(tmp_path):
    """A mapped weight changed in place lives in private copies of its pages: handing those back
    (MADV_DONTNEED) would silently restore the file's values, so weight_pages leaves them alone."""
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/pagemap (Linux) is needed")
    lin, flat, _ = _linear_mapped_from_safetensors(tmp_path, before_binding=lambda flat: flat["weights"].mul_(2.0))
    written = flat["weights"].clone()  # every page of the weight was made this process's own copy
    x = torch.randn(3, 512)
    with RuntimePolicy(precision="fp32").active():
        torch.testing.assert_close(lin(x), x @ written + flat["bias"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lin.weights, written, rtol=0, atol=0)
