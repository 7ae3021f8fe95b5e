"""The cpu runner against ColabFold's JAX runner (the oracle), at reduced depth.

Same random params (drawn from haiku's recorded init, zero_init=False, noise on constant arrays;
``parity.random_params_for_config``),
same processed features from ColabFold's own pipeline, JAX in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from af2cpu_plugin.cpu import cpu_info
from af2cpu_plugin.engine.policy import RuntimePolicy
from af2cpu_plugin.testing import parity

DATA = Path(__file__).parent / "data"

# Reduced depth: 2 Evoformer blocks, 1 extra-MSA block, 2 passes. Channels stay
# real (RunModel hard-codes prev shapes 256/128).
REDUCED = dict(evoformer_blocks=2, extra_blocks=1, num_recycle=1)
# At reduced depth the two engines agree to float32 rounding.
BARS = {"coordinates (Å)": 1e-2, "pLDDT": 1e-2, "PAE": 1e-2, "pTM": 1e-4}


@pytest.fixture(scope="module")
def case():
    a3m = (DATA / "msa_62aa_6seqs.a3m").read_text()
    cfg = parity.colabfold_config("model_3_ptm", msa_depth=parity.msa_depth(a3m), **REDUCED)
    feat = parity.processed_features(cfg, a3m)
    # Seed 3: the first draw whose PAE varies at this depth (draws 0-2 saturate the PAE head, which
    # test_random_params_give_informative_confidence refuses: such weights would hide bugs).
    flat = parity.random_params_for_config(cfg, seed=3)
    return cfg, feat, flat


@pytest.fixture(scope="module")
def fp32_results(case):
    cfg, feat, flat = case
    return parity.run_both_fp32(cfg, flat, feat)


def test_end_to_end_fp32_parity(fp32_results):
    jax_ret, cpu_ret = fp32_results
    diffs = parity.compare(jax_ret, cpu_ret)
    for name, (mx, mean) in diffs.items():
        assert mx <= BARS[name], f"{name}: max |Δ| {mx:.3g} (mean {mean:.3g}) over bar {BARS[name]}"


@pytest.mark.skipif(not cpu_info().native_bf16, reason="bf16 runs only where the CPU has native bf16 dot products "
                    "(--precision auto picks fp32 elsewhere and the CLI refuses bf16): its fidelity is judged there; "
                    "PyTorch's fallback bf16 GEMM on an AVX2 CPU rounds differently (measured on a Zen 3: PAE max "
                    "2.73 against JAX bf16's 2.62, mean 0.043 against 0.090)")
@pytest.mark.parametrize("pair_storage", ["fp32", "bf16"])
def test_bf16_no_worse_than_colabfolds_own_bf16(case, fp32_results, pair_storage):
    """cpu bf16 against JAX fp32 stays within ColabFold's own bf16-vs-fp32 gap (JAX bf16 against JAX fp32),
    also with the pair stored in bf16 (what the runner chooses where memory is short)."""
    cfg, feat, flat = case
    jax_fp32, _ = fp32_results
    policy = RuntimePolicy(precision="bf16", pair_storage=pair_storage)
    _, cpu_bf16 = parity.run_both_fp32(cfg, flat, feat, policy=policy)
    jax_bf16, _ = parity.run_both_fp32(parity.with_bfloat16(cfg), flat, feat, cpu=False)
    ours, theirs = parity.compare(jax_fp32, cpu_bf16), parity.compare(jax_fp32, jax_bf16)
    # The bf16 pair is ColabFold's own arithmetic, rounded at other points, so its error is ColabFold's
    # give or take the spread of such maxima (here PAE 2.88 against JAX bf16's 2.79, mean 0.077 against
    # 0.090); the fp32 pair keeps the engine's bf16 below ColabFold's.
    margin = 1.5 if pair_storage == "bf16" else 1.0
    for name in ("coordinates (Å)", "pLDDT", "PAE"):
        assert ours[name][0] <= max(margin * theirs[name][0], BARS[name]), (name, ours[name], theirs[name])
        assert ours[name][1] <= max(margin * theirs[name][1], BARS[name]), (name, ours[name], theirs[name])


def test_random_params_give_informative_confidence(fp32_results):
    """pLDDT and PAE must vary across residues, or the parity test would hide bugs."""
    jax_ret, cpu_ret = fp32_results
    for ret in (jax_ret, cpu_ret):
        assert np.std(ret["plddt"]) > 0.1, np.std(ret["plddt"])
        assert np.std(ret["predicted_aligned_error"]) > 0.1
        pos = ret["structure_module"]["final_atom_positions"][:, 1]
        assert np.ptp(pos, axis=0).min() > 1.0, "Cα atoms collapsed to a point"


def _keys(tree, prefix=""):
    out = set()
    for k, v in tree.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, prefix + k + "/")
    return out


def test_predict_contract_matches_runmodel(case):
    """Same result keys, float16 leaves, recycle count and callbacks as RunModel.predict."""
    cfg, feat, flat = case
    seen = {"jax": [], "cpu": []}
    jax_res, jax_r = parity.run_jax(cfg, flat, feat)
    from af2cpu_plugin.runner import CpuRunModel

    runner = CpuRunModel(cfg, parity.nested(flat))
    cpu_res, cpu_r = runner.predict(feat, return_representations=True,
                                    callback=lambda res, r: seen["cpu"].append(r))
    assert cpu_r == jax_r == cfg.model.num_recycle
    assert seen["cpu"] == list(range(cfg.model.num_recycle + 1))
    assert _keys(cpu_res) - {"representations", "representations/pair", "representations/single"} == _keys(jax_res)
    L = feat["aatype"].shape[1]
    assert cpu_res["representations"]["pair"].shape == (L, L, 128)
    assert cpu_res["representations"]["single"].shape == (L, 256)

    def leaves(tree):
        for v in tree.values():
            yield from (leaves(v) if isinstance(v, dict) else [v])

    assert all(np.asarray(v).dtype == np.float16 for v in leaves(cpu_res))
    # float16 outputs agree within float16 resolution plus engine rounding
    d = np.abs(cpu_res["plddt"].astype(np.float32) - jax_res["plddt"].astype(np.float32)).max()
    assert d < 0.1, d


def test_early_stop_on_score_and_tol(case):
    cfg, feat, flat = case
    from af2cpu_plugin.runner import CpuRunModel

    stop_now = cfg.copy_and_resolve_references()
    stop_now.model.stop_at_score = 0.0
    _, r = CpuRunModel(stop_now, parity.nested(flat)).predict(feat)
    assert r == 0
    tol_cfg = cfg.copy_and_resolve_references()
    tol_cfg.model.recycle_early_stop_tolerance = 1e9
    res, r = CpuRunModel(tol_cfg, parity.nested(flat)).predict(feat)
    assert r == 1 and "tol" in res


def test_params_reassigned_per_model(case):
    """ColabFold swaps models by assigning ``runner.params``; outputs follow the params."""
    cfg, feat, flat = case
    from af2cpu_plugin.runner import CpuRunModel

    other = {k: (v * 1.05 if k.endswith("//weights") else v) for k, v in flat.items()}
    runner = CpuRunModel(cfg, parity.nested(flat))
    a, _ = runner.predict(feat)
    runner.params = parity.nested(other)
    b, _ = runner.predict(feat)
    runner.params = parity.nested(flat)
    c, _ = runner.predict(feat)
    assert not np.array_equal(a["plddt"], b["plddt"])
    np.testing.assert_array_equal(a["plddt"], c["plddt"])


def test_subbatching_policy_does_not_change_result(case):
    cfg, feat, flat = case
    from af2cpu_plugin.runner import CpuRunModel

    runner = CpuRunModel(cfg, parity.nested(flat), policy=RuntimePolicy(subbatch_size=7))
    res, _ = runner.predict(feat)
    ref, _ = CpuRunModel(cfg, parity.nested(flat)).predict(feat)
    d = np.abs(res["structure_module"]["final_atom_positions"].astype(np.float32)
               - ref["structure_module"]["final_atom_positions"].astype(np.float32)).max()
    assert d <= 0.07, d  # float16 output resolution


def test_unpadded_query_is_the_padded_one_to_rounding(case):
    """The cpu backend runs each query at its own length (``colabfold_seam._unpadded``) where ColabFold pads it
    by ``--recompile-padding`` residues for XLA and crops every output back: the same prediction to rounding,
    since the padded residues are masked out everywhere."""
    from colabfold import batch

    from af2cpu_plugin.runner import CpuRunModel

    cfg, feat, flat = case
    runner = CpuRunModel(cfg, parity.nested(flat))
    n = feat["aatype"].shape[-1]
    ref, _ = runner.predict(feat)
    padded, _ = runner.predict(batch.pad_input(feat, runner, "model_3", n + 10, use_templates=False))
    assert padded["plddt"].shape == (n + 10,)
    cropped = {"plddt": padded["plddt"][:n], "predicted_aligned_error": padded["predicted_aligned_error"][:n, :n],
               "ptm": padded["ptm"],
               "structure_module": {k: padded["structure_module"][k][:n]
                                    for k in ("final_atom_positions", "final_atom_mask")}}
    heads = {"pLDDT": "plddt", "PAE": "predicted_aligned_error"}
    for name, (mx, mean) in parity.compare(ref, cropped).items():
        if name == "coordinates (Å)":
            # The padded run's sums run over exact zeros in other GEMM blockings: last-bit differences, which
            # the second pass's recycled positions amplify at a few atoms. Measured: mean 0.0004 Å, max 0.125 Å
            # (two float16 steps at 90 Å; predict returns float16 positions).
            assert mean <= 1e-3 and mx <= 0.25, f"coordinates: max |Δ| {mx:.3g}, mean {mean:.3g}"
        elif name in heads and mx > BARS[name]:
            # The same last-bit differences move a head's value across a float16 rounding boundary now and then:
            # one float16 step is 0.0156 for a PAE of 16-32 and 0.0625 for a pLDDT of 64-100 (measured: one PAE
            # entry, one step, mean 1e-5).
            steps = _float16_steps(ref[heads[name]], cropped[heads[name]])
            assert steps <= 1 and mean <= 1e-3, f"{name}: max |Δ| {mx:.3g} = {steps:.3g} float16 steps, mean {mean:.3g}"
        else:
            assert mx <= BARS[name], f"{name}: max |Δ| {mx:.3g} (mean {mean:.3g}) over bar {BARS[name]}"


def _float16_steps(a, b) -> float:
    """The largest |a - b| of two float16 arrays in units of float16's spacing at the larger magnitude."""
    a, b = np.asarray(a, np.float16), np.asarray(b, np.float16)
    step = np.spacing(np.maximum(np.abs(a), np.abs(b))).astype(np.float32)
    return float((np.abs(a.astype(np.float32) - b.astype(np.float32)) / step).max())


def test_complex_with_ptm_model_masks_relpos_by_chain():
    """``A:B`` folded with a ptm model: ColabFold's asym_id masking of relative positions."""
    cfg = parity.colabfold_config("model_3_ptm", msa_depth=1, **REDUCED)
    feat = parity.processed_features(cfg, "MKTAYIAKQRQISFVKSHFSRQ:GSHMLEDPVDAFQ")
    assert len(set(feat["asym_id"][0])) == 2
    flat = parity.random_params_for_config(cfg, seed=1)
    history = []
    jax_ret, cpu_ret = parity.run_both_fp32(cfg, flat, feat, history=history)
    # One pass agrees to rounding. The recycled pass of this random-weight complex amplifies rounding in JAX
    # too: its own input moved by one float32 ulp moves its coordinates 0.014-0.020 Å (measured), over the
    # 0.01 Å bar; there the bar is the issue's, 2x that floor.
    for name, (mx, mean) in parity.compare(*history[0]).items():
        assert mx <= BARS[name], f"first pass, {name}: max |Δ| {mx:.3g} (mean {mean:.3g})"
    jax_again, _ = parity.run_both_fp32(cfg, flat, parity.perturbed_by_one_ulp(feat, "msa_feat", np.inf), cpu=False)
    floor = parity.compare(jax_ret, jax_again)
    for name, (mx, mean) in parity.compare(jax_ret, cpu_ret).items():
        bar = max(BARS[name], 2 * floor[name][0])
        assert mx <= bar, f"{name}: max |Δ| {mx:.3g} (mean {mean:.3g}), JAX's 1-ulp floor {floor[name][0]:.3g}"
    assert "iptm" in cpu_ret
    assert abs(float(cpu_ret["iptm"]) - float(jax_ret["iptm"])) < 1e-4


def test_seeded_one_ulp_nudge_moves_each_element_at_most_one_ulp():
    """bench/parity.py's extra floor samples: each element one ulp up, down or unchanged, the same per seed."""
    x = np.linspace(-3.0, 3.0, 1000, dtype=np.float32).reshape(10, 100)
    a = parity.perturbed_by_one_ulp({"msa_feat": x}, "msa_feat", 0.0, seed=4)["msa_feat"]
    up, down = np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))
    assert a.dtype == np.float32 and np.all((a == x) | (a == up) | (a == down))
    assert (a == up).sum() > 250 and (a == down).sum() > 250 and (a == x).sum() > 250
    np.testing.assert_array_equal(a, parity.perturbed_by_one_ulp({"msa_feat": x}, "msa_feat", 0.0, seed=4)["msa_feat"])
    assert not np.array_equal(a, parity.perturbed_by_one_ulp({"msa_feat": x}, "msa_feat", 0.0, seed=5)["msa_feat"])
