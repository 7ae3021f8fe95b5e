"""Long sequences: the memory-saving paths compute what the whole-tensor paths compute.

The grouped triangle multiplication, the row-sliced embeddings, the in-place
distogram symmetrisation and the runner's choice of chunking under a memory
limit (issue 8). Each is compared with the path it replaces, to rounding.
"""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
import torch

from af2cpu_plugin.engine.embeddings import RecyclingEmbedder, RelativePositionEncoding, add_relpos_
from af2cpu_plugin.engine.heads import symmetrised_
from af2cpu_plugin.engine.multimer.embeddings import RelativeChainEncoding
from af2cpu_plugin.engine.policy import RuntimePolicy, trunk_precision
from af2cpu_plugin.engine.triangle_multiplication import TriangleMultiplication


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.1
        if p.dim() == 1 and p.shape[0] > 0:
            p.data += 1.0  # LayerNorm scales near one, as trained ones are


@pytest.mark.parametrize("equation", ["ikc,jkc->ijc", "kjc,kic->ijc"], ids=["outgoing", "incoming"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_grouped_triangle_multiplication_matches_whole(equation, precision, padded):
    cfg = ml_collections.ConfigDict({"equation": equation, "num_intermediate_channel": 32,
                                     "fuse_projection_weights": True})
    module = TriangleMultiplication(cfg, 24)
    _randomise(module)
    n = 37
    pair = torch.randn(n, n, 24, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(n, n)
    if padded:
        mask[30:] = 0
        mask[:, 30:] = 0
    results = {}
    # Several groups and slice sizes (uneven last slices too); 1 group is the whole-tensor path.
    for groups, slice_bytes in ((1, None), (2, 3000), (4, 10_000), (8, 1 << 30)):
        policy = RuntimePolicy(precision=precision, channel_groups=groups, slice_bytes=slice_bytes)
        with policy.active(), torch.inference_mode(), trunk_precision():
            results[groups] = module.add_update_(pair.clone(), mask)
    whole = results.pop(1)
    assert not torch.equal(whole, pair)  # the update did something
    for groups, grouped in results.items():
        torch.testing.assert_close(grouped, whole, rtol=0, atol=1e-5, msg=f"{groups} groups")


def test_channel_groups_must_divide_the_channels_else_whole():
    """A group count that does not divide the channels falls back to the whole-tensor path."""
    cfg = ml_collections.ConfigDict({"equation": "ikc,jkc->ijc", "num_intermediate_channel": 12,
                                     "fuse_projection_weights": True})
    module = TriangleMultiplication(cfg, 8)
    _randomise(module)
    pair, mask = torch.randn(9, 9, 8), torch.ones(9, 9)
    with torch.inference_mode():
        whole = module.add_update_(pair.clone(), mask)
        with RuntimePolicy(channel_groups=5).active():
            other = module.add_update_(pair.clone(), mask)
    torch.testing.assert_close(other, whole, rtol=0, atol=0)


def test_relative_position_rows_match_whole():
    relpos = RelativePositionEncoding(32, 16)
    _randomise(relpos)
    n = 41
    index = torch.arange(n) + 7
    asym = torch.cat([torch.zeros(20), torch.ones(21)])
    for chains in (None, asym):
        whole = torch.randn(n, n, 16)
        expected = whole + relpos(index, chains)
        with RuntimePolicy(slice_bytes=700).active():
            got = add_relpos_(whole.clone(), relpos, index, chains)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_relative_chain_encoding_rows_match_whole():
    relpos = RelativeChainEncoding(32, 2, 16)
    _randomise(relpos)
    index = torch.cat([torch.arange(15), torch.arange(15), torch.arange(9)])
    asym = torch.tensor([1] * 15 + [2] * 15 + [3] * 9)
    entity = torch.tensor([1] * 30 + [2] * 9)
    sym = torch.tensor([1] * 15 + [2] * 15 + [1] * 9)
    pair = torch.randn(39, 39, 16)
    expected = pair + relpos(index, asym, entity, sym)
    with RuntimePolicy(slice_bytes=1000).active():
        got = add_relpos_(pair.clone(), relpos, index, asym, entity, sym)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_recycling_embedder_rows_match_whole_with_float16_prev_pair():
    cfg = ml_collections.ConfigDict({"num_bins": 15, "min_bin": 3.25, "max_bin": 20.75})
    embedder = RecyclingEmbedder(cfg, 8, 16)
    _randomise(embedder)
    gen = torch.Generator().manual_seed(2)
    n = 23
    msa, pair = torch.randn(3, n, 8, generator=gen), torch.randn(n, n, 16, generator=gen)
    aatype = torch.randint(0, 20, (n,), generator=gen)
    prev_pos = torch.randn(n, 37, 3, generator=gen) * 10
    prev_first = torch.randn(n, 8, generator=gen)
    prev_pair = torch.randn(n, n, 16, generator=gen).half()
    whole_msa, whole_pair = embedder(msa.clone(), pair.clone(), aatype, prev_pos, prev_first, prev_pair.float())
    with RuntimePolicy(slice_bytes=500).active():
        got_msa, got_pair = embedder(msa.clone(), pair.clone(), aatype, prev_pos, prev_first, prev_pair)
    torch.testing.assert_close(got_msa, whole_msa, rtol=0, atol=0)
    torch.testing.assert_close(got_pair, whole_pair, rtol=0, atol=0)
    assert not torch.equal(got_pair, pair)


@pytest.mark.parametrize("n", [1, 5, 300])
def test_symmetrised_in_place_equals_sum_with_transpose(n):
    half = torch.randn(n, n, 3)
    expected = half + half.transpose(0, 1)
    got = symmetrised_(half.clone(), tile=64)
    assert torch.equal(got, expected)


def test_runner_chooses_channel_groups_per_input():
    """Short inputs: the whole triangle multiplication; long ones: grouped; a tight limit: more groups;
    a policy that fixes the groups keeps them."""
    from af2cpu_plugin.capacity import cost_model
    from af2cpu_plugin.runner import CpuRunModel
    from af2cpu_plugin.testing import parity

    cfg = parity.colabfold_config("model_3_ptm", 0, msa_depth=1)

    def single(L):
        return {"aatype": np.zeros(L, np.int32), "msa_feat": np.zeros((1, L, 49), np.float32),
                "extra_msa": np.zeros((1, L), np.int32)}

    runner = CpuRunModel(cfg, policy=RuntimePolicy())
    assert runner.policy_for(single(300)).channel_groups == 1
    assert runner.policy_for(single(cost_model.GROUPED_FROM)).channel_groups == 4
    workload = runner.workload(single(3000))
    assert (workload.num_res, workload.msa_depth, workload.extra_msa_depth) == (3000, 1, 1)
    coefficients = cost_model.load(threads=torch.get_num_threads())
    four, sixteen = (cost_model.peak_rss(workload, g, coefficients) for g in (4, 16))
    assert sixteen < four
    tight = CpuRunModel(cfg, policy=RuntimePolicy(memory_limit=(four + sixteen) // 2))
    assert tight.policy_for(single(3000)).channel_groups == 16
    fixed = CpuRunModel(cfg, policy=RuntimePolicy(channel_groups=1, memory_limit=(four + sixteen) // 2))
    assert fixed.policy_for(single(3000)).channel_groups == 1
    # bf16: the pair is stored in bf16 only where no fp32-pair grouping fits.
    assert tight.policy_for(single(3000)).pair_storage == "fp32"
    bf16_pair = cost_model.peak_rss(workload, 4, coefficients, "bf16", "bf16")
    fp32_pair = cost_model.peak_rss(workload, 16, coefficients, "bf16")
    short = CpuRunModel(cfg, policy=RuntimePolicy(precision="bf16", memory_limit=(bf16_pair + fp32_pair) // 2))
    assert short.policy_for(single(3000)).pair_storage == "bf16"
    assert short.policy_for(single(300)).pair_storage == "fp32"


@pytest.mark.parametrize("slice_bytes", [None, 100], ids=["one-slice", "row-slices"])
def test_bf16_pair_becomes_float16_in_its_own_storage(slice_bytes):
    """The recycled pair of a bf16-stored trunk: float16 in the bf16 pair's own bytes (no second pair-sized
    tensor at the end of a pass), the same numbers as ``.to(torch.float16)``, including values float16
    rounds to inf or zero."""
    from af2cpu_plugin.engine.primitives import to_float16_

    gen = torch.Generator().manual_seed(0)
    pair = (torch.randn(9, 7, 5, generator=gen) * 3).to(torch.bfloat16)
    pair[0, 0, :3] = torch.tensor([1e5, -1e-8, 65504.0]).to(torch.bfloat16)
    expected = pair.to(torch.float16)
    with RuntimePolicy(slice_bytes=slice_bytes).active():
        got = to_float16_(pair)
    assert got.dtype == torch.float16 and got.data_ptr() == pair.data_ptr()
    assert torch.equal(got, expected)
    fp32 = torch.randn(3, 4, 2, generator=gen)
    assert torch.equal(to_float16_(fp32), fp32.to(torch.float16))  # other dtypes: a plain cast
