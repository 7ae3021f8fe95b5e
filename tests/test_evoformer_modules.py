"""Evoformer modules against ColabFold's haiku originals (fp32, reduced sizes)."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest
import torch

from af2cpu_plugin.engine.evoformer import EvoformerIteration, EvoformerStack
from af2cpu_plugin.engine.msa_attention import (
    MSAColumnAttention,
    MSAColumnGlobalAttention,
    MSARowAttentionWithPairBias,
)
from af2cpu_plugin.engine.outer_product_mean import OuterProductMean
from af2cpu_plugin.engine.params import bind_params, expected_params
from af2cpu_plugin.engine.policy import RuntimePolicy
from af2cpu_plugin.engine.transition import Transition
from af2cpu_plugin.engine.triangle_attention import TriangleAttention
from af2cpu_plugin.engine.triangle_multiplication import TriangleMultiplication
from af2cpu_plugin.testing.oracle import as_tensor, assert_close, fp32_global_config, haiku_reference

hk = pytest.importorskip("haiku")
modules = pytest.importorskip("alphafold.model.modules")

N_SEQ, N_RES, C_M, C_Z = 5, 11, 16, 8
REL_TOL = 1e-4


def evoformer_config(first: bool = False):
    """ColabFold's evoformer config, shrunk (same keys, fused tri-mult)."""
    from alphafold.model import config

    c = config.model_config("model_3_ptm").model.embeddings_and_evoformer.evoformer
    c.msa_row_attention_with_pair_bias.num_head = 2
    c.msa_column_attention.num_head = 2
    c.triangle_attention_starting_node.num_head = 2
    c.triangle_attention_ending_node.num_head = 2
    # ci != c_z so that a wrong left/right split or axis mix-up cannot hide.
    c.triangle_multiplication_outgoing.num_intermediate_channel = 6
    c.triangle_multiplication_incoming.num_intermediate_channel = 6
    c.outer_product_mean.num_outer_channel = 4
    c.outer_product_mean.chunk_size = 3  # haiku chunks the OPM too
    c.outer_product_mean.first = first
    return c


def make_inputs(seed: int = 0, n_seq: int = N_SEQ, c_m: int = C_M):
    rng = np.random.default_rng(seed)
    msa = rng.normal(size=(n_seq, N_RES, c_m)).astype(np.float32)
    pair = rng.normal(size=(N_RES, N_RES, C_Z)).astype(np.float32)
    msa_mask = (rng.uniform(size=(n_seq, N_RES)) > 0.2).astype(np.float32)
    msa_mask[:, -2:] = 0.0  # padded residues
    msa_mask[-1, :] = 0.0  # a fully padded sequence
    res_mask = msa_mask.max(0)
    pair_mask = (res_mask[:, None] * res_mask[None, :]).astype(np.float32)
    pair_mask[0, 3] = 0.0  # and an asymmetric hole
    return msa, pair, msa_mask, pair_mask




def check(name, ours, ref):
    return assert_close(name, ours, ref, REL_TOL)


def run_torch(module, flat, root, *inputs):
    module.eval()
    bind_params(module, flat, root=root)
    with torch.inference_mode():
        return module(*[as_tensor(x) for x in inputs])


# --------------------------------------------------------------------------- single modules


def test_msa_transition():
    cfg, gc = evoformer_config(), fp32_global_config()
    msa, _, msa_mask, _ = make_inputs()

    def build(act, mask):
        return modules.Transition(cfg.msa_transition, gc, name="msa_transition")(act, mask, is_training=False)

    flat, ref = haiku_reference(build, msa, msa_mask)
    out = run_torch(Transition(cfg.msa_transition, C_M), flat, "msa_transition", msa, msa_mask)
    check("msa_transition", out, ref)


def test_pair_transition():
    cfg, gc = evoformer_config(), fp32_global_config()
    _, pair, _, pair_mask = make_inputs()

    def build(act, mask):
        return modules.Transition(cfg.pair_transition, gc, name="pair_transition")(act, mask, is_training=False)

    flat, ref = haiku_reference(build, pair, pair_mask)
    out = run_torch(Transition(cfg.pair_transition, C_Z), flat, "pair_transition", pair, pair_mask)
    check("pair_transition", out, ref)


def test_msa_row_attention_with_pair_bias():
    cfg, gc = evoformer_config(), fp32_global_config()
    msa, pair, msa_mask, _ = make_inputs()
    scope = "msa_row_attention_with_pair_bias"

    def build(m, mm, p):
        return modules.MSARowAttentionWithPairBias(cfg[scope], gc, name=scope)(m, mm, p, is_training=False)

    flat, ref = haiku_reference(build, msa, msa_mask, pair)
    out = run_torch(MSARowAttentionWithPairBias(cfg[scope], C_M, C_Z), flat, scope, msa, msa_mask, pair)
    check(scope, out, ref)


def test_msa_column_attention():
    cfg, gc = evoformer_config(), fp32_global_config()
    msa, _, msa_mask, _ = make_inputs()
    scope = "msa_column_attention"

    def build(m, mm):
        return modules.MSAColumnAttention(cfg.msa_column_attention, gc, name=scope)(m, mm, is_training=False)

    flat, ref = haiku_reference(build, msa, msa_mask)
    out = run_torch(MSAColumnAttention(cfg.msa_column_attention, C_M), flat, scope, msa, msa_mask)
    check(scope, out, ref)


def test_msa_column_global_attention():
    cfg, gc = evoformer_config(), fp32_global_config()
    msa, _, msa_mask, _ = make_inputs()
    scope = "msa_column_global_attention"

    def build(m, mm):
        return modules.MSAColumnGlobalAttention(cfg.msa_column_attention, gc, name=scope)(m, mm, is_training=False)

    flat, ref = haiku_reference(build, msa, msa_mask)
    out = run_torch(MSAColumnGlobalAttention(cfg.msa_column_attention, C_M), flat, scope, msa, msa_mask)
    check(scope, out, ref)


@pytest.mark.parametrize("scope", ["triangle_attention_starting_node", "triangle_attention_ending_node"])
def test_triangle_attention(scope):
    cfg, gc = evoformer_config(), fp32_global_config()
    _, pair, _, pair_mask = make_inputs()

    def build(p, pm):
        return modules.TriangleAttention(cfg[scope], gc, name=scope)(p, pm, is_training=False)

    flat, ref = haiku_reference(build, pair, pair_mask)
    out = run_torch(TriangleAttention(cfg[scope], C_Z), flat, scope, pair, pair_mask)
    check(scope, out, ref)


@pytest.mark.parametrize("scope", ["triangle_multiplication_outgoing", "triangle_multiplication_incoming"])
def test_triangle_multiplication(scope):
    cfg, gc = evoformer_config(), fp32_global_config()
    assert cfg[scope].fuse_projection_weights
    _, pair, _, pair_mask = make_inputs()

    def build(p, pm):
        return modules.TriangleMultiplication(cfg[scope], gc, name=scope)(p, pm, is_training=False)

    flat, ref = haiku_reference(build, pair, pair_mask)
    assert f"{scope}/projection//weights" in flat  # the fused layout
    out = run_torch(TriangleMultiplication(cfg[scope], C_Z), flat, scope, pair, pair_mask)
    check(scope, out, ref)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("n_seq", [1, N_SEQ, 9], ids=["one_sequence", "shallow", "deep"])
def test_outer_product_mean(padded, n_seq):
    """Shallow MSAs (here up to 7 sequences at these widths) project through output_w first, deeper ones
    sum the outer products first, as haiku does; both match haiku in fp32."""
    cfg, gc = evoformer_config(), fp32_global_config()
    msa, _, msa_mask, _ = make_inputs(n_seq=n_seq)
    if n_seq == 1:
        msa_mask[0] = 1.0
        msa_mask[0, -2:] = 0.0  # the one sequence present, padded residues still padded
    if not padded:  # all ones: the engine skips the mask product
        msa_mask = np.ones_like(msa_mask)
    scope = "outer_product_mean"

    def build(m, mm):
        return modules.OuterProductMean(cfg.outer_product_mean, gc, C_Z, name=scope)(m, mm, is_training=False)

    flat, ref = haiku_reference(build, msa, msa_mask)
    out = run_torch(OuterProductMean(cfg.outer_product_mean, C_M, C_Z), flat, scope, msa, msa_mask)
    check(scope, out, ref)


def test_outer_product_mean_order_rule():
    """Projected first only where it is fewer multiply-adds and its temporary stays under 256 MiB."""
    from af2cpu_plugin.engine.outer_product_mean import projects_first

    assert projects_first(1, 200, 32, 128) and projects_first(42, 200, 32, 128)
    assert not projects_first(43, 200, 32, 128)  # haiku's order is cheaper from 43 sequences
    assert projects_first(1, 16384, 32, 128) and not projects_first(1, 16385, 32, 128)
    assert projects_first(8, 2048, 32, 128) and not projects_first(8, 2049, 32, 128)
    assert projects_first(8, 4096, 32, 128, itemsize=2)  # bf16's temporary is half the size


# --------------------------------------------------------------------------- whole blocks


def _haiku_iteration(cfg, gc, is_extra_msa, name):
    def build(msa, pair, msa_mask, pair_mask):
        it = modules.EvoformerIteration(cfg, gc, is_extra_msa=is_extra_msa, name=name)
        out = it({"msa": msa, "pair": pair}, {"msa": msa_mask, "pair": pair_mask}, is_training=False)
        return out["msa"], out["pair"]

    return build


@pytest.mark.parametrize(
    "is_extra_msa,first", [(False, False), (True, False), (False, True)], ids=["main", "extra", "opm_first"]
)
def test_evoformer_iteration(is_extra_msa, first):
    cfg, gc = evoformer_config(first=first), fp32_global_config()
    c_m = 12 if is_extra_msa else C_M
    inputs = make_inputs(seed=1, c_m=c_m)
    name = "extra_msa_stack" if is_extra_msa else "evoformer_iteration"
    flat, (ref_msa, ref_pair) = haiku_reference(_haiku_iteration(cfg, gc, is_extra_msa, name), *inputs)
    model = EvoformerIteration(cfg, c_m, C_Z, is_extra_msa)
    assert set(expected_params(model, root=name)) == set(flat)
    msa, pair = run_torch(model, flat, name, *inputs)
    check(f"{name} msa (opm first={first})", msa, ref_msa)
    check(f"{name} pair (opm first={first})", pair, ref_pair)


class _Evoformer(torch.nn.Module):
    """Stand-in for the parent embedding module: the stack is an attribute named as in haiku."""

    def __init__(self, cfg, num_block, c_m, is_extra_msa):
        super().__init__()
        stack = EvoformerStack(cfg, num_block, c_m, C_Z, is_extra_msa)
        setattr(self, "extra_msa_stack" if is_extra_msa else "evoformer_iteration", stack)
        self.stack_name = "extra_msa_stack" if is_extra_msa else "evoformer_iteration"

    def forward(self, *args):
        return getattr(self, self.stack_name)(*args)


def _haiku_stack(cfg, gc, num_block, is_extra_msa):
    from alphafold.model import layer_stack, prng

    name = "extra_msa_stack" if is_extra_msa else "evoformer_iteration"

    class Evoformer(hk.Module):
        def __init__(self):
            super().__init__(name="evoformer")

        def __call__(self, msa, pair, msa_mask, pair_mask):
            it = modules.EvoformerIteration(cfg, gc, is_extra_msa=is_extra_msa, name=name)

            def block(x):
                act, key = x
                key, sub = key.split()
                out = it(act, {"msa": msa_mask, "pair": pair_mask}, is_training=False, safe_key=sub)
                return out, key

            out, _ = layer_stack.layer_stack(num_block)(block)(
                ({"msa": msa, "pair": pair}, prng.SafeKey(hk.next_rng_key()))
            )
            return out["msa"], out["pair"]

    return lambda *a: Evoformer()(*a)


@pytest.mark.parametrize("is_extra_msa", [False, True], ids=["evoformer_iteration", "extra_msa_stack"])
def test_stacked_binding(is_extra_msa):
    cfg, gc = evoformer_config(), fp32_global_config()
    inputs = make_inputs(seed=2)
    flat, (ref_msa, ref_pair) = haiku_reference(_haiku_stack(cfg, gc, 2, is_extra_msa), *inputs)
    model = _Evoformer(cfg, 2, C_M, is_extra_msa)
    want = expected_params(model, root="evoformer")
    assert want == {k: v.shape for k, v in flat.items()}
    assert all(v[0] == 2 for v in want.values())
    msa, pair = run_torch(model, flat, "evoformer", *inputs)
    check("stack msa", msa, ref_msa)
    check("stack pair", pair, ref_pair)


@pytest.mark.parametrize(
    "is_extra_msa,num_block,c_m", [(False, 48, 256), (True, 4, 64)], ids=["evoformer_iteration", "extra_msa_stack"]
)
def test_full_size_param_shapes(is_extra_msa, num_block, c_m):
    """Real ColabFold sizes: our expected keys/shapes equal haiku's (shapes only, no compute)."""
    import jax
    from alphafold.model import config

    full = config.model_config("model_3_ptm").model
    cfg, gc = full.embeddings_and_evoformer.evoformer, fp32_global_config()
    c_z = full.embeddings_and_evoformer.pair_channel
    fn = hk.transform(_haiku_stack(cfg, gc, num_block, is_extra_msa))
    n_seq, n_res = 3, 4
    shapes = jax.eval_shape(
        fn.init,
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((n_seq, n_res, c_m), np.float32),
        jax.ShapeDtypeStruct((n_res, n_res, c_z), np.float32),
        jax.ShapeDtypeStruct((n_seq, n_res), np.float32),
        jax.ShapeDtypeStruct((n_res, n_res), np.float32),
    )
    haiku_shapes = {f"{s}//{n}": tuple(v.shape) for s, d in shapes.items() for n, v in d.items()}
    parent = torch.nn.Module()
    name = "extra_msa_stack" if is_extra_msa else "evoformer_iteration"
    setattr(parent, name, EvoformerStack(cfg, num_block, c_m, c_z, is_extra_msa))
    assert expected_params(parent, root="evoformer") == haiku_shapes


def test_subbatched_matches_unchunked():
    """RuntimePolicy(subbatch_size=2) changes nothing beyond rounding."""
    cfg = evoformer_config()
    inputs = [as_tensor(x) for x in make_inputs(seed=3)]
    for is_extra_msa in (False, True):
        name = "extra_msa_stack" if is_extra_msa else "evoformer_iteration"
        flat, _ = haiku_reference(_haiku_iteration(cfg, fp32_global_config(), is_extra_msa, name), *make_inputs(3))
        model = EvoformerIteration(cfg, C_M, C_Z, is_extra_msa).eval()
        bind_params(model, flat, root=name)
        with torch.inference_mode():  # a block updates msa and pair in place: each call gets copies
            full = model(*[t.clone() for t in inputs])
            with RuntimePolicy(subbatch_size=2).active():
                chunked = model(*[t.clone() for t in inputs])
        for a, b in zip(full, chunked):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
