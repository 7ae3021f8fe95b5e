"""Template embedding against ColabFold's haiku originals (fp32, reduced sizes),
and one reduced-depth end-to-end run of model_1_ptm with a real template."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path

import numpy as np
import pytest
import torch

from af2cpu_plugin.engine.params import bind_params
from af2cpu_plugin.engine.template_features import colabfold_torsion_angles, template_single_features
from af2cpu_plugin.engine.templates import SingleTemplateEmbedding, TemplateEmbedding, TemplatePairStack
from af2cpu_plugin.testing.oracle import as_tensor, assert_close, fp32_global_config, haiku_reference

hk = pytest.importorskip("haiku")
modules = pytest.importorskip("alphafold.model.modules")

DATA = Path(__file__).resolve().parent / "data"  # ColabFold's test structure, MIT (see data/README.md)
PDB = DATA / "ERR550519_2213899_unrelaxed_model_1.pdb"
CIF = DATA / "ERR550519_2213899_unrelaxed_model_1.cif"

N_RES, C_Z, C_T = 14, 12, 8
REL_TOL = 1e-4


def template_config(unit_vector: bool = False):
    """model_1's template config, shrunk (same keys, fused tri-mult)."""
    from alphafold.model import config

    c = config.model_config("model_1_ptm").model.embeddings_and_evoformer.template
    s = c.template_pair_stack
    for k in ("triangle_attention_starting_node", "triangle_attention_ending_node"):
        s[k].num_head = 2
        s[k].key_dim = C_T
        s[k].value_dim = C_T  # = the template pair channel c_t
    for k in ("triangle_multiplication_outgoing", "triangle_multiplication_incoming"):
        s[k].num_intermediate_channel = 6
        s[k].fuse_projection_weights = True
    c.attention.num_head = 2
    c.attention.key_dim = 6
    c.attention.value_dim = 10
    c.use_template_unit_vector = unit_vector
    c.subbatch_size = 7  # haiku subbatches the pointwise attention
    return c




def check(name, ours, ref, tol=REL_TOL):
    return assert_close(name, ours, ref, tol)


def run_torch(module, flat, root, *inputs):
    module.eval()
    bind_params(module, flat, root=root)
    with torch.inference_mode():
        return module(*[as_tensor(x) for x in inputs])


@pytest.fixture(scope="module")
def structure():
    """The test structure's aatype [R], atom37 positions [R, 37, 3] and mask [R, 37]."""
    from alphafold.common import protein

    prot = protein.from_pdb_string(PDB.read_text())
    return (prot.aatype.astype(np.int32), prot.atom_positions.astype(np.float32),
            prot.atom_mask.astype(np.float32))


def template_batch(structure, num_templates=3, start=20):
    """Templates cut from the test structure, with missing atoms, uncovered residues
    and (as ColabFold pads) an empty template."""
    aatype, pos, mask = structure
    rng = np.random.default_rng(0)
    aa, xyz, am = [], [], []
    for i in range(num_templates):
        s = start + 17 * i
        a, p, m = aatype[s:s + N_RES].copy(), pos[s:s + N_RES].copy(), mask[s:s + N_RES].copy()
        p = p + rng.normal(scale=0.3, size=p.shape).astype(np.float32)
        if i == 1:  # uncovered residues (as an alignment gap) and missing atoms
            m[3:6] = 0.0
            a[3:6] = 21  # gap
            m[8, 4] = 0.0  # no O: psi undefined
            m[9, 1] = 0.0  # no CA: no backbone frame
            m[10, 4:] = 0.0  # no side chain (no CB)
        if i == num_templates - 1:  # the padding template
            a[:] = 0
            m[:] = 0.0
        p = p * m[..., None]
        aa.append(a), xyz.append(p), am.append(m)
    aa, xyz, am = np.stack(aa), np.stack(xyz), np.stack(am)
    gly = (aa == 7)[..., None]
    pb = np.where(gly, xyz[..., 1, :], xyz[..., 3, :]).astype(np.float32)
    pb_mask = np.where(gly[..., 0], am[..., 1], am[..., 3]).astype(np.float32)
    tmask = np.ones(num_templates, np.float32)
    tmask[-1] = 0.0
    return {"template_aatype": aa.astype(np.int32), "template_pseudo_beta": pb, "template_pseudo_beta_mask": pb_mask,
            "template_all_atom_positions": xyz.astype(np.float32), "template_all_atom_masks": am,
            "template_mask": tmask}


def pair_inputs(seed=0):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(N_RES, N_RES, C_Z)).astype(np.float32)
    seq_mask = np.ones(N_RES, np.float32)
    seq_mask[-2:] = 0.0  # padded residues
    return query, (seq_mask[:, None] * seq_mask[None, :]).astype(np.float32)


# --------------------------------------------------------------------------- torsion features


@pytest.mark.parametrize("placeholder", [False, True])
def test_torsion_angles_match_all_atom(structure, placeholder):
    from alphafold.model import all_atom

    aatype, pos, mask = structure
    # Batch of two: the real chain, and one with missing atoms, gaps and an UNK.
    pos2, mask2, aa2 = pos.copy(), mask.copy(), aatype.copy()
    mask2[10:13] = 0.0
    mask2[20, 4] = 0.0
    mask2[30, 5:] = 0.0
    aa2[40] = 20
    aa2[41] = 21
    pos2 = pos2 * mask2[..., None]
    aa_b, pos_b, mask_b = np.stack([aatype, aa2]), np.stack([pos, pos2]), np.stack([mask, mask2])
    import jax

    ref = jax.jit(lambda a, p, m: all_atom.atom37_to_torsion_angles(a, p, m, placeholder_for_undefined=placeholder))(
        aa_b, pos_b.astype(np.float32), mask_b.astype(np.float32))
    with torch.inference_mode():
        ours = colabfold_torsion_angles(as_tensor(aa_b), as_tensor(pos_b), as_tensor(mask_b),
                                        placeholder_for_undefined=placeholder)
        features, psi_mask = template_single_features(as_tensor(aa_b), as_tensor(pos_b), as_tensor(mask_b),
                                                      placeholder_for_undefined=placeholder)
    for k in ("torsion_angles_sin_cos", "alt_torsion_angles_sin_cos", "torsion_angles_mask"):
        np.testing.assert_array_equal(ours[k].numpy(), np.asarray(ref[k]), err_msg=k)
    # The 57 template-row features, laid out as modules.EmbeddingsAndEvoformer concatenates them.
    n_t, n_r = aa_b.shape
    expected = np.concatenate([np.eye(22, dtype=np.float32)[aa_b],
                               np.asarray(ref["torsion_angles_sin_cos"]).reshape(n_t, n_r, 14),
                               np.asarray(ref["alt_torsion_angles_sin_cos"]).reshape(n_t, n_r, 14),
                               np.asarray(ref["torsion_angles_mask"])], axis=-1)
    np.testing.assert_array_equal(features.numpy(), expected)
    np.testing.assert_array_equal(psi_mask.numpy(), np.asarray(ref["torsion_angles_mask"])[:, :, 2])


# --------------------------------------------------------------------------- modules


def test_template_pair_stack():
    cfg, gc = template_config(), fp32_global_config()
    rng = np.random.default_rng(1)
    pair = rng.normal(size=(N_RES, N_RES, C_T)).astype(np.float32)
    _, pair_mask = pair_inputs()
    pair_mask[0, 3] = 0.0  # an asymmetric hole

    def build(p, pm):
        return modules.TemplatePairStack(cfg.template_pair_stack, gc)(p, pm, is_training=False)

    flat, ref = haiku_reference(build, pair, pair_mask)
    assert any(k.startswith("template_pair_stack/__layer_stack_no_state/") for k in flat)
    module = TemplatePairStack(cfg.template_pair_stack, C_T)
    assert len(module.blocks) == 2
    out = run_torch(module, flat, "template_pair_stack", pair, pair_mask)
    check("template_pair_stack", out, ref)


SINGLE_KEYS = ("template_aatype", "template_pseudo_beta", "template_pseudo_beta_mask",
               "template_all_atom_positions", "template_all_atom_masks")


@pytest.mark.parametrize("unit_vector", [False, True])
@pytest.mark.parametrize("which", [0, 1])
def test_single_template_embedding(structure, unit_vector, which):
    cfg, gc = template_config(unit_vector), fp32_global_config()
    batch = template_batch(structure)
    feats = [batch[k][which] for k in SINGLE_KEYS]
    query, pair_mask = pair_inputs()

    def build(q, pm, *f):
        return modules.SingleTemplateEmbedding(cfg, gc)(q, dict(zip(SINGLE_KEYS, f)), pm, is_training=False)

    flat, ref = haiku_reference(build, query, pair_mask, *feats)
    out = run_torch(SingleTemplateEmbedding(cfg, C_T), flat, "single_template_embedding", *feats, pair_mask)
    check(f"single_template_embedding[{which}, unit_vector={unit_vector}]", out, ref)


def _haiku_template_embedding(cfg, gc, batch):
    keys = SINGLE_KEYS + ("template_mask",)

    def build(q, pm, *f):
        return modules.TemplateEmbedding(cfg, gc)(q, dict(zip(keys, f)), pm, is_training=False)

    query, pair_mask = pair_inputs()
    return haiku_reference(build, query, pair_mask, *[batch[k] for k in keys]), query, pair_mask


def _torch_template_embedding(cfg, flat, batch, query, pair_mask):
    keys = SINGLE_KEYS + ("template_mask",)
    return run_torch(TemplateEmbedding(cfg, C_Z), flat, "template_embedding", query,
                     *[batch[k] for k in keys], pair_mask)


def test_template_embedding_with_a_masked_template(structure):
    cfg, gc = template_config(unit_vector=True), fp32_global_config()
    batch = template_batch(structure, num_templates=3)
    (flat, ref), query, pair_mask = _haiku_template_embedding(cfg, gc, batch)
    assert "template_embedding/attention//query_w" in flat
    out = _torch_template_embedding(cfg, flat, batch, query, pair_mask)
    check("template_embedding", out, ref)
    assert np.abs(np.asarray(ref)).max() > 0.1


def test_template_embedding_without_templates_is_zero(structure):
    cfg, gc = template_config(), fp32_global_config()
    batch = template_batch(structure, num_templates=2)
    batch["template_mask"][:] = 0.0
    (flat, ref), query, pair_mask = _haiku_template_embedding(cfg, gc, batch)
    out = _torch_template_embedding(cfg, flat, batch, query, pair_mask)
    assert not np.asarray(ref).any()
    assert not out.numpy().any()


# --------------------------------------------------------------------------- end to end

# Reduced depth as in test_runner_parity. msa_depth=5: ColabFold's budget for a
# single sequence with templates (1 + 4 template rows; colabfold.batch.run).
REDUCED = dict(evoformer_blocks=2, extra_blocks=1, num_recycle=1)
BARS = {"coordinates (Å)": 1e-2, "pLDDT": 1e-2, "PAE": 1e-2, "pTM": 1e-4}
QUERY_LENGTH = 60


@pytest.fixture(scope="module")
def template_case(tmp_path_factory, structure):
    from alphafold.common import residue_constants as rc

    from af2cpu_plugin.testing import parity

    aatype, _, _ = structure
    query = "".join(rc.restypes_with_x[a] for a in aatype)[:QUERY_LENGTH]
    work = tmp_path_factory.mktemp("templates")
    template_dir = work / "templates"
    template_dir.mkdir()
    shutil.copy(CIF, template_dir / "1err.cif")  # named like a PDB entry, as the featuriser wants
    templates = parity.custom_template_features(query, template_dir, work)
    assert templates[0]["template_domain_names"].size > 0
    assert b"none" not in list(templates[0]["template_domain_names"])
    cfg = parity.colabfold_config("model_1_ptm", msa_depth=5, **REDUCED)
    assert cfg.model.embeddings_and_evoformer.template.enabled
    feat = parity.processed_features(cfg, query, templates=templates)
    assert feat["template_mask"][0].sum() >= 1
    assert feat["template_pseudo_beta_mask"][0].sum() > 0
    flat = parity.random_params_for_config(cfg, seed=0)
    return cfg, feat, flat


def test_end_to_end_with_real_template(template_case):
    """model_1_ptm with a real template (two hhsearch hits, one partial) against JAX,
    with ColabFold's own config (``zero_init=True``: no placeholder for undefined torsions,
    see test_masked_torsions_follow_jitted_colabfold)."""
    from af2cpu_plugin.testing import parity

    cfg, feat, flat = template_case
    assert cfg.model.global_config.zero_init
    jax_ret, cpu_ret = parity.run_both_fp32(cfg, flat, feat)
    for name, (mx, mean) in parity.compare(jax_ret, cpu_ret).items():
        print(f"{name}: max|d|={mx:.3e} mean|d|={mean:.3e}")
        assert mx <= BARS[name], f"{name}: max |Δ| {mx:.3g} (mean {mean:.3g}) over bar {BARS[name]}"


def test_template_changes_the_prediction(template_case):
    """ColabFold's own config; the same features with template_mask zeroed give another result."""
    from af2cpu_plugin.runner import CpuRunModel
    from af2cpu_plugin.testing import parity

    cfg, feat, flat = template_case
    assert cfg.model.global_config.zero_init  # ColabFold's: no torsion placeholder
    runner = CpuRunModel(cfg, parity.nested(flat))
    assert not runner.model.evoformer.template_torsion_embedder.placeholder_for_undefined
    with_t, _ = runner.predict(feat)
    without_t, _ = runner.predict(dict(feat, template_mask=np.zeros_like(feat["template_mask"])))
    d = np.abs(with_t["structure_module"]["final_atom_positions"].astype(np.float32)
               - without_t["structure_module"]["final_atom_positions"].astype(np.float32)).max()
    assert d > 0.5, d
    assert np.abs(with_t["plddt"].astype(np.float32) - without_t["plddt"].astype(np.float32)).max() > 0.1


def test_masked_torsions_follow_jitted_colabfold(template_case):
    """Undefined torsions (no placeholder, ColabFold's config) are defined only by XLA's
    rounding: eager and jitted JAX disagree there, while every defined torsion agrees.
    The engine takes them from ColabFold's jitted function, as ColabFold's model does."""
    import jax
    from alphafold.model import all_atom

    _, feat, _ = template_case
    args = (feat["template_aatype"][0], feat["template_all_atom_positions"][0].astype(np.float32),
            feat["template_all_atom_masks"][0].astype(np.float32))
    fn = lambda a, p, m: all_atom.atom37_to_torsion_angles(a, p, m, placeholder_for_undefined=False)  # noqa: E731
    eager, jitted = fn(*args), jax.jit(fn)(*args)
    with torch.inference_mode():
        ours = colabfold_torsion_angles(*[as_tensor(x) for x in args])
    mask = np.asarray(eager["torsion_angles_mask"], bool)
    key = "torsion_angles_sin_cos"
    e, j, o = np.asarray(eager[key]), np.asarray(jitted[key]), ours[key].numpy()
    assert np.abs(e - j)[mask].max() < 1e-5  # defined torsions: rounding only
    assert np.abs(e - j)[~mask].max() > 0.1  # undefined ones: XLA's rounding decides
    np.testing.assert_array_equal(o, j)
