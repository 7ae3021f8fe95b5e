"""The cost model (issue 8): its FLOP count, its chunking choice, its calibration file and fit.

How close its predictions come to measured peak RSS at 200-1,500 residues is
checked by the heavy ``test_cost_model_predicts_measured_peak_rss`` (real
passes in child processes) and reported by ``bench/memory.py``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from af2cpu_plugin.capacity import calibrate, cost_model, flops
from af2cpu_plugin.engine.evoformer import EvoformerIteration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.flops import MatmulFlops  # noqa: E402  (the benchmarks' dispatch-mode counter)

GIB = 1 << 30


@pytest.mark.parametrize("S", [6, 64], ids=["shallow", "deep"])  # the outer product mean's two orders
@pytest.mark.parametrize("extra", [False, True], ids=["main", "extra"])
def test_block_flops_match_the_counted_products(extra, S):
    """The analytic count of a block's matmul work is within 5% of the products the engine runs."""
    from alphafold.model import config

    cfg = config.model_config("model_3_ptm").model.embeddings_and_evoformer.evoformer  # AF2's own widths
    L = 40
    c_m = flops.C_E if extra else flops.C_M
    block = EvoformerIteration(cfg, c_m, flops.C_Z, is_extra_msa=extra).eval()
    gen = torch.Generator().manual_seed(0)
    for p in block.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.05
    msa, pair = torch.randn(S, L, c_m), torch.randn(L, L, flops.C_Z)
    with torch.inference_mode(), MatmulFlops() as counted:
        block(msa, pair, torch.ones(S, L), torch.ones(L, L))
    expected = flops.extra_block_flops(L, S) if extra else flops.main_block_flops(L, S)
    assert abs(counted.total / expected - 1) < 0.05, (counted.by_op, expected)


def test_estimate_picks_the_cheapest_chunking_that_fits():
    c = cost_model.DEFAULT
    work = cost_model.Workload(3000)
    whole, grouped = cost_model.peak_rss(work, 1, c), cost_model.peak_rss(work, 4, c)
    assert grouped < whole
    assert cost_model.estimate(work, memory_limit=None, coefficients=c).channel_groups == 4  # long: grouped
    assert cost_model.estimate(cost_model.Workload(200), coefficients=c).channel_groups == 1
    fitting = cost_model.estimate(work, memory_limit=grouped + GIB, coefficients=c)
    assert (fitting.channel_groups, fitting.fits) == (4, True)
    too_small = cost_model.estimate(work, memory_limit=GIB, coefficients=c)
    assert too_small.fits is False and too_small.channel_groups == cost_model.GROUP_CHOICES[-1]
    # fp32 precision never stores the pair in bf16; bf16 does only where no fp32-pair grouping fits.
    assert too_small.pair_storage == "fp32"
    frugal_fp32 = cost_model.peak_rss(work, 16, c, "bf16")
    bf16_pair = cost_model.peak_rss(work, 4, c, "bf16", "bf16")
    assert bf16_pair < frugal_fp32
    plenty = cost_model.estimate(work, "bf16", memory_limit=frugal_fp32 + GIB, coefficients=c)
    assert plenty.pair_storage == "fp32"
    short = cost_model.estimate(work, "bf16", memory_limit=(bf16_pair + frugal_fp32) // 2, coefficients=c)
    assert (short.pair_storage, short.channel_groups, short.fits) == ("bf16", 4, True)
    # Deeper MSAs and more residues cost more memory and time.
    deep = cost_model.Workload(3000, msa_depth=512, extra_msa_depth=5120)
    assert cost_model.peak_rss(deep, 4, c) > grouped
    assert cost_model.seconds_per_pass(cost_model.Workload(600), "fp32", 1, c) > \
        cost_model.seconds_per_pass(cost_model.Workload(300), "fp32", 1, c)


def test_monomer_templates_are_counted_where_they_are_the_peak():
    """With templates the monomer's peak is at least the pair plus the template embedding beside it
    (K_TEMPLATES, measured); multimer templates are summed one at a time in the trunk's budget."""
    c = cost_model.DEFAULT
    plain, templated = cost_model.Workload(3000), cost_model.Workload(3000, templates=4)
    assert cost_model.peak_rss(templated, 4, c) > cost_model.peak_rss(plain, 4, c)
    pair = 3000 * 3000 * 128 * 4
    assert cost_model.peak_rss(templated, 4, c) >= (1.0 + cost_model.K_TEMPLATES) * pair
    multimer = cost_model.Workload(3000, templates=4, multimer=True)
    assert cost_model.peak_rss(multimer, 4, c) == cost_model.peak_rss(cost_model.Workload(3000, multimer=True), 4, c)


def test_calibration_file_round_trip_and_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("AF2CPU_CALIBRATION_DIR", str(tmp_path))
    # Nothing stored: the built-in coefficients of the CPU's vector ISA (a Zen 3 pass takes ~3x a Zen 5's).
    assert cost_model.load("Some CPU", 2, capability="AVX512") is cost_model.DEFAULT
    assert cost_model.load("Some CPU", 2, capability="AVX2") is cost_model.AVX2
    assert cost_model.load("Some CPU", 2, capability="DEFAULT") is cost_model.DEFAULT
    work = cost_model.Workload(200)
    assert cost_model.seconds_per_pass(work, "fp32", 1, cost_model.AVX2) > \
        2 * cost_model.seconds_per_pass(work, "fp32", 1, cost_model.DEFAULT)
    # Built for 2 threads: other thread counts scale the time, not the memory.
    eight = cost_model.load("Some CPU", 8, capability="AVX2")
    assert eight.threads == 8 and eight.k_pair == cost_model.AVX2.k_pair
    assert cost_model.seconds_per_pass(work, "fp32", 1, eight) == \
        pytest.approx(cost_model.seconds_per_pass(work, "fp32", 1, cost_model.AVX2) / 4)
    mine = dataclasses.replace(cost_model.DEFAULT, base_bytes={"fp32": 1e9}, k_pair={"fp32": {1: 6.0, 4: 3.0}},
                               cpu="Some CPU", threads=3, calibrated=True)
    path = cost_model.save(mine)
    assert path.parent == tmp_path
    assert cost_model.load("Some CPU", 3) == mine
    assert not cost_model.load("Some CPU", 4, capability="AVX512").calibrated  # another thread count
    path.write_text("{not json")
    damaged = cost_model.load("Some CPU", 3, capability="AVX2")  # a damaged file is ignored, not fatal
    assert not damaged.calibrated and damaged.k_pair == cost_model.AVX2.k_pair
    # A calibration stored before the slack was fitted reads with the cache's bound.
    path.write_text(json.dumps({k: v for k, v in mine.to_json().items() if k != "slack"}))
    assert cost_model.load("Some CPU", 3).slack == cost_model.MAX_SLACK


def test_fit_recovers_the_coefficients_of_synthetic_measurements():
    time = {"block_seconds_per_flop": 1 / 2e11, "block_seconds_per_pair_element": 4e-8,
            "rest_seconds_per_flop": 1 / 1e11, "rest_seconds_per_pair_element": 2e-7, "fixed_seconds": 0.5}
    truth = cost_model.Coefficients(base_bytes={"fp32": 0.7 * GIB}, k_pair={"fp32": {1: 6.5, 4: 2.9}}, time={"fp32": time},
                                    group_time_factor={1: 1.0, 4: 1.2}, slack=0.06)
    rows = []
    for L in calibrate.LENGTHS:
        work = cost_model.Workload(L)
        pair, msa, extra = cost_model.tensor_bytes(work)
        block = flops.main_block_flops(L, 1) * time["block_seconds_per_flop"] + \
            time["block_seconds_per_pair_element"] * L * L
        rest = (flops.pass_flops(L, main_blocks=0) * time["rest_seconds_per_flop"]
                + time["rest_seconds_per_pair_element"] * L * L * 4 + time["fixed_seconds"])  # 4 extra-MSA blocks
        for g in (1, 4):
            # Two passes, as calibrate measures: the second holds the recycled pair too.
            live = (truth.k_pair["fp32"][g] + cost_model.K_PREV) * pair + cost_model.K_MSA * msa + \
                cost_model.K_EXTRA * extra
            rows.append({"num_res": L, "precision": "fp32", "groups": g, "main_blocks": 2, "passes": 2,
                         "base_bytes": 0.7 * GIB, "pass_live_bytes": live,
                         "peak_rss_bytes": cost_model.peak_rss(work, g, truth), "block_seconds": block,
                         "seconds": (2 * block + rest) * truth.group_time_factor[g]})
    c = calibrate.fit(rows, "Some CPU", 2)
    assert c.calibrated and c.threads == 2
    assert c.k_pair["fp32"][1] == pytest.approx(6.5) and c.k_pair["fp32"][4] == pytest.approx(2.9)
    assert c.base_bytes["fp32"] == pytest.approx(0.7 * GIB)
    assert c.slack == pytest.approx(0.06) and c.k_outside["fp32"] == pytest.approx(0.0, abs=1e-9)
    for key, value in time.items():
        assert c.time["fp32"][key] == pytest.approx(value, rel=1e-3, abs=1e-9), key
    assert c.group_time_factor[4] == pytest.approx(1.2)
    # A full pass: 48 main blocks and the rest.
    L = 1000
    expected = 48 * (flops.main_block_flops(L, 1) / 2e11 + 4e-8 * L * L) + \
        flops.pass_flops(L, main_blocks=0) / 1e11 + 2e-7 * L * L * 4 + 0.5
    assert cost_model.seconds_per_pass(cost_model.Workload(L), "fp32", 1, c) == pytest.approx(expected, rel=1e-3)


@pytest.mark.heavy
@pytest.mark.parametrize("num_res", [200, pytest.param(600, marks=pytest.mark.xfail(
    strict=False, reason="+16-18% (fp32, 4 groups) with the cache slack at its bound, as the Zen 5 built-in "
                         "coefficients have it; a calibration fits it (+10% on a Zen 3)")), 1000, 1500])
def test_cost_model_predicts_measured_peak_rss(num_res, tmp_path):
    """Predicted peak RSS within 15% of a measured pass (a fresh child, this machine's coefficients),
    for the chunking the engine picks under this machine's memory limit."""
    from af2cpu_plugin.capacity.limits import memory_limit
    from af2cpu_plugin.cpu import cpu_info
    from af2cpu_plugin.testing.params_cache import cached_random_data_dir

    threads = torch.get_num_threads()
    coefficients = cost_model.load(cpu_info().calibration_name, threads)
    plan = cost_model.estimate(cost_model.Workload(num_res), "fp32", threads, memory_limit(None).bytes, coefficients)
    data = cached_random_data_dir("alphafold2_ptm", models=(3,))
    row = calibrate.run_child(num_res, "fp32", plan.channel_groups, threads, str(data))
    error = plan.peak_rss_bytes / row["peak_rss_bytes"] - 1
    assert abs(error) <= 0.15, (num_res, plan, row)
