"""Progress on --backend cpu: the engine's per-block observer and the runner's bar (issue 8).

Small models only: a 3-block Evoformer stack with shrunk channels, and a
3-block model (real channels, random params) through ``CpuRunModel.predict``.
"""

from __future__ import annotations

import io
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest
import torch

from af2cpu_plugin import progress
from af2cpu_plugin.engine import progress as engine_progress
from af2cpu_plugin.engine.evoformer import EvoformerStack
from af2cpu_plugin.engine.multimer.model import MultimerIteration
from af2cpu_plugin.engine.params import bind_params, expected_params
from af2cpu_plugin.runner import CpuRunModel
from af2cpu_plugin.testing import parity

N_SEQ, N_RES, C_M, C_Z = 4, 9, 16, 8
BLOCKS, PASSES = 3, 3  # the runner's model: 3 main blocks, num_recycle=2


def small_evoformer_config():
    """ColabFold's evoformer config with few heads and channels (as tests/test_evoformer_modules.py)."""
    from alphafold.model import config

    c = config.model_config("model_3_ptm").model.embeddings_and_evoformer.evoformer
    for k in ("msa_row_attention_with_pair_bias", "msa_column_attention",
              "triangle_attention_starting_node", "triangle_attention_ending_node"):
        c[k].num_head = 2
    for k in ("triangle_multiplication_outgoing", "triangle_multiplication_incoming"):
        c[k].num_intermediate_channel = 6
        c[k].fuse_projection_weights = True
    c.outer_product_mean.num_outer_channel = 4
    return c


def small_stack(is_extra_msa: bool) -> EvoformerStack:
    parent = torch.nn.Module()
    name = "extra_msa_stack" if is_extra_msa else "evoformer_iteration"
    stack = EvoformerStack(small_evoformer_config(), BLOCKS, C_M, C_Z, is_extra_msa)
    setattr(parent, name, stack)
    rng = np.random.default_rng(0)
    flat = {k: (0.1 * rng.standard_normal(s)).astype(np.float32)
            for k, s in expected_params(parent, root="evoformer").items()}
    bind_params(parent, flat, root="evoformer")
    return stack.eval()


def stack_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N_SEQ, N_RES, C_M, generator=g), torch.randn(N_RES, N_RES, C_Z, generator=g),
            torch.ones(N_SEQ, N_RES), torch.ones(N_RES, N_RES))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: on a loaded machine, waking other threads for each op costs more than the op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


# --------------------------------------------------------------------------- engine side


def test_main_stack_reports_each_block_only_while_observed():
    stack, inputs, seen = small_stack(is_extra_msa=False), stack_inputs(), Counter()
    with torch.inference_mode():
        with engine_progress.observing(seen):
            stack(*inputs)
            assert seen.calls == BLOCKS
            stack(*inputs)
            assert seen.calls == 2 * BLOCKS
        stack(*inputs)  # the observer is gone once its context ends
    assert seen.calls == 2 * BLOCKS


def test_extra_msa_stack_is_not_counted():
    stack, inputs, seen = small_stack(is_extra_msa=True), stack_inputs(), Counter()
    with torch.inference_mode(), engine_progress.observing(seen):
        stack(*inputs)
    assert seen.calls == 0


def test_no_observer_is_a_no_op_and_contexts_nest():
    engine_progress.block_done()  # nothing observing: no error, nothing to call
    outer, inner = Counter(), Counter()
    with engine_progress.observing(outer):
        with engine_progress.observing(inner):
            engine_progress.block_done()
        engine_progress.block_done()
    engine_progress.block_done()
    assert (outer.calls, inner.calls) == (1, 1)


@pytest.mark.parametrize("model_name", ["model_3_ptm", "model_1_multimer_v3"])
def test_only_the_main_stack_counts_in_both_models(model_name):
    """Monomer and multimer trunks both use EvoformerStack twice; only ``evoformer_iteration`` reports."""
    from af2cpu_plugin.engine.model import AlphaFoldIteration

    cfg = parity.colabfold_config(model_name, evoformer_blocks=1, extra_blocks=1, structure_layers=1,
                                  template_blocks=1)
    model_class = MultimerIteration if parity.is_multimer(cfg) else AlphaFoldIteration
    model = model_class(cfg.model)
    stacks = {name: m.reports_progress for name, m in model.named_modules() if isinstance(m, EvoformerStack)}
    assert stacks == {"evoformer.extra_msa_stack": False, "evoformer.evoformer_iteration": True}


# --------------------------------------------------------------------------- runner side


@pytest.fixture(scope="module")
def small_runner():
    """A 3-block model_3_ptm (real channels, small random params) on a 16-residue query, 3 passes."""
    cfg = parity.colabfold_config("model_3_ptm", num_recycle=PASSES - 1, evoformer_blocks=BLOCKS, extra_blocks=1,
                                  structure_layers=1, msa_depth=1)
    feat = parity.processed_features(cfg, "MKTAYIAKQRQISFVK")
    runner = CpuRunModel(cfg)
    rng = np.random.default_rng(0)
    runner.params = {k: (0.05 * rng.standard_normal(s)).astype(np.float32)
                     for k, s in expected_params(runner.model).items()}
    runner.predict(feat)  # warm-up (first-call costs) outside the tests' stderr patches
    return runner, feat


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


@pytest.fixture
def bars(monkeypatch):
    """Every tqdm bar the runner opens, with ``n`` at the moment it was closed."""
    made = []

    class RecordingBar(progress.tqdm):
        def __init__(self, *args, **kwargs):
            self.closed_at = None
            super().__init__(*args, **kwargs)
            made.append(self)

        def close(self):
            if self.closed_at is None:
                self.closed_at = self.n
            super().close()

    monkeypatch.setattr(progress, "tqdm", RecordingBar)
    return made


def colabfold_like_callback(tag: str, recycles: list):
    """Shaped as colabfold.batch.predict_structure's callback: a closure over the run's ``tag``."""
    def callback(result, r):
        recycles.append((tag, r))
    return callback


def test_no_terminal_no_bar_and_callback_sees_every_pass(small_runner, bars, monkeypatch):
    runner, feat = small_runner
    err = NotATerminal()
    monkeypatch.setattr(sys, "stderr", err)
    recycles = []
    _, r = runner.predict(feat, callback=colabfold_like_callback("t", recycles))
    assert bars == [] and err.getvalue() == ""
    assert r == PASSES - 1 and [n for _, n in recycles] == list(range(PASSES))


def test_terminal_bar_counts_passes_times_main_blocks(small_runner, bars, monkeypatch):
    runner, feat = small_runner
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    tag = "alphafold2_ptm_model_3_seed_000"
    recycles = []
    runner.predict(feat, callback=colabfold_like_callback(tag, recycles))
    assert len(bars) == 1
    bar = bars[0]
    assert (bar.total, bar.closed_at, bar.desc, bar.leave) == (PASSES * BLOCKS, PASSES * BLOCKS, tag, False)
    assert len(recycles) == PASSES
    out = err.getvalue()
    assert tag in out and out.endswith("\r")  # drawn on the terminal, then cleared
    assert engine_progress._OBSERVER.get() is None  # predict leaves no observer behind


def test_early_stop_closes_the_bar_where_it_stopped(small_runner, bars, monkeypatch):
    runner, feat = small_runner
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(runner.config.model, "recycle_early_stop_tolerance", 1000.0)  # stop after pass 1 (r > 0)
    _, r = runner.predict(feat, callback=lambda result, r: None)
    assert r == 1
    bar = bars[0]
    assert (bar.total, bar.closed_at, bar.desc) == (PASSES * BLOCKS, 2 * BLOCKS, progress.FALLBACK_DESC)
    final = sys.stderr.getvalue().rsplit("\r", 2)
    assert f"{PASSES * BLOCKS}/{PASSES * BLOCKS}" not in sys.stderr.getvalue()  # never shown as complete
    assert final[-1] == "" and final[-2].strip() == ""  # the line is blanked, nothing left on it


def test_bar_closes_when_a_pass_fails(small_runner, bars, monkeypatch):
    runner, feat = small_runner
    monkeypatch.setattr(sys, "stderr", Terminal())

    def failing(result, r):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.predict(feat, callback=failing)
    assert bars[0].closed_at == BLOCKS
    assert engine_progress._OBSERVER.get() is None


def test_colabfolds_recycle_callback_closes_over_its_tag():
    """model_tag relies on this: predict_structure's nested ``callback`` reads the enclosing ``tag``."""
    from colabfold import batch

    callback, = (c for c in batch.predict_structure.__code__.co_consts
                 if getattr(c, "co_name", None) == "callback")
    assert "tag" in callback.co_freevars


def test_model_tag_reads_colabfolds_callback_or_falls_back():
    assert progress.model_tag(colabfold_like_callback("alphafold2_model_1_seed_042", [])) \
        == "alphafold2_model_1_seed_042"
    assert progress.model_tag(lambda result, r: None) == progress.FALLBACK_DESC
    assert progress.model_tag(None) == progress.FALLBACK_DESC
