"""AlphaFold-Multimer template embedding against ColabFold's haiku originals
(modules_multimer.TemplateEmbedding, SingleTemplateEmbedding, TemplateEmbeddingIteration,
template_embedding_1d), fp32, reduced sizes; and the full-size multimer v3 parameter set.

The templates are built here, with no data files: random two-chain sequences
placed with AlphaFold's idealized geometry (a chain grown from φ/ψ/ω by the
residue tables' bond lengths and angles, side chains from random rotamer-like
χ through the engine's torsion_angles_to_frames and literature positions),
then noised and damaged as real templates are."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest
import torch

from af2cpu_plugin.engine.multimer import template_features as tf
from af2cpu_plugin.engine.multimer.templates import (SingleTemplateEmbedding, TemplateEmbedding,
                                                     TemplateEmbeddingIteration, TemplateSingleEmbedding)
from af2cpu_plugin.engine.params import bind_params, expected_params
from af2cpu_plugin.testing.oracle import fp32_multimer_global_config, as_tensor, assert_close, haiku_reference

hk = pytest.importorskip("haiku")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
modules_multimer = pytest.importorskip("alphafold.model.modules_multimer")

N_RES, C_Z, C_M, C_T = 11, 12, 10, 8
CHAIN_A = 6  # residues [0, 6) are chain A, [6, 11) chain B
REL_TOL = 1e-4



def full_template_config():
    from alphafold.model import config

    return config.model_config("model_1_multimer_v3").model.embeddings_and_evoformer.template


def template_config():
    """model_1_multimer_v3's template config, shrunk (same keys, fused tri-mult)."""
    c = full_template_config()
    c.num_channels = C_T
    s = c.template_pair_stack
    for k in ("triangle_attention_starting_node", "triangle_attention_ending_node"):
        s[k].num_head = 2
    for k in ("triangle_multiplication_outgoing", "triangle_multiplication_incoming"):
        s[k].num_intermediate_channel = 6
        assert s[k].fuse_projection_weights
    assert s.num_block == 2
    return c


def run_torch(module, flat, root, *inputs):
    module.eval()
    bind_params(module, flat, root=root)
    with torch.inference_mode():
        return module(*[as_tensor(x) if not isinstance(x, np.ndarray) or x.dtype != bool
                        else torch.from_numpy(x) for x in inputs])


# --------------------------------------------------------------------------- synthetic templates


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _place(a, b, c, bond, angle, torsion):
    """NeRF: the atom d with |cd| = bond, angle bcd = angle and dihedral abcd = torsion (radians)."""
    bc = _unit(c - b)
    n = _unit(np.cross(b - a, bc))
    m = np.cross(n, bc)
    return c + bond * (-np.cos(angle) * bc + np.sin(angle) * (np.cos(torsion) * m + np.sin(torsion) * n))


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


_HELIX, _STRAND = (-63.0, -43.0), (-120.0, 130.0)  # (φ, ψ) in degrees


def ideal_chain(aatype, rng, chain_starts=()):
    """atom37 positions [R, 37, 3] and mask [R, 37] of ``aatype`` in AlphaFold's idealized geometry.

    The backbone grows residue by residue (NeRF) from φ/ψ near α-helix or
    β-strand values in runs of three, ω near 180°, the inter-residue C-N bond
    and angles of ``residue_constants`` and each residue's own N-CA, CA-C and
    N-CA-C from its literature positions, so the backbone frames reproduce
    N, CA, C. Each residue in ``chain_starts`` begins a new chain, in a random
    frame about 12 Å from the chain so far. The engine's
    ``torsion_angles_to_frames`` and ``frames_and_literature_positions_to_atom14_pos``
    then place O (from ψ) and the side chains (χ near -60°, 60° or 180°), and
    ``atom14_to_atom37`` scatters them. Coordinates are offset from the
    origin, as a PDB's are. Also returns the backbone [R, 3 (N, CA, C), 3]
    and the χ [R, 4] used, to check the build.
    """
    from alphafold.common import residue_constants as rc

    from af2cpu_plugin.engine import all_atom
    from af2cpu_plugin.engine.geometry import Rigids

    aatype = np.asarray(aatype)
    n = len(aatype)
    lit = rc.restype_atom14_rigid_group_positions  # [21, 14, 3]: N, CA (origin), C, ... in the backbone frame
    c_n = np.where(aatype == rc.restype_order["P"], *rc.between_res_bond_length_c_n[::-1])  # Pro's C-N is longer
    ca_c_n = np.arccos(rc.between_res_cos_angles_ca_c_n[0])
    c_n_ca = np.arccos(rc.between_res_cos_angles_c_n_ca[0])
    helix = np.repeat(rng.random(n // 3 + 1) < 0.5, 3)[:n]
    phi, psi = np.deg2rad(np.where(helix[:, None], _HELIX, _STRAND) + rng.normal(scale=12.0, size=(n, 2))).T
    omega = np.deg2rad(180.0 + rng.normal(scale=5.0, size=n))
    chi = np.deg2rad(rng.choice([-60.0, 60.0, 180.0], size=(n, 4)) + rng.normal(scale=15.0, size=(n, 4)))

    bb = np.zeros((n, 3, 3))
    for i in range(n):
        lit_n, lit_c = lit[aatype[i], 0], lit[aatype[i], 2]
        if i == 0 or i in chain_starts:
            origin = rng.normal(scale=10.0, size=3) if i == 0 else bb[:i, 1].mean(0) + 12.0 * _unit(rng.normal(size=3))
            bb[i] = origin + lit[aatype[i], :3] @ _random_rotation(rng).T
            continue
        n_prev, ca_prev, c_prev = bb[i - 1]
        atom_n = _place(n_prev, ca_prev, c_prev, c_n[i], ca_c_n, psi[i - 1])
        atom_ca = _place(ca_prev, c_prev, atom_n, np.linalg.norm(lit_n), c_n_ca, omega[i])
        n_ca_c = np.arccos(np.dot(_unit(lit_n), _unit(lit_c)))
        bb[i] = atom_n, atom_ca, _place(c_prev, atom_n, atom_ca, np.linalg.norm(lit_c), n_ca_c, phi[i])

    # The backbone frames (r3's convention: x along CA->C, N in the xy-plane), then the atoms.
    e0 = _unit(bb[:, 2] - bb[:, 1])
    e1 = bb[:, 0] - bb[:, 1]
    e1 = _unit(e1 - np.sum(e1 * e0, -1, keepdims=True) * e0)
    rot = np.stack([e0, e1, np.cross(e0, e1)], axis=-1)
    torsions = np.stack([omega, phi, psi, *chi.T], axis=-1)
    sin_cos = np.stack([np.sin(torsions), np.cos(torsions)], axis=-1)
    aa = torch.from_numpy(aatype.astype(np.int64))
    with torch.inference_mode():
        backbone = Rigids(torch.tensor(rot, dtype=torch.float32), torch.tensor(bb[:, 1], dtype=torch.float32))
        frames = all_atom.torsion_angles_to_frames(aa, backbone, torch.tensor(sin_cos, dtype=torch.float32))
        atom14 = all_atom.frames_and_literature_positions_to_atom14_pos(aa, frames)
        masks = all_atom.make_atom14_masks(aa)
        pos = all_atom.atom14_to_atom37(atom14, masks["residx_atom37_to_atom14"], masks["atom37_atom_exists"])
    return pos.numpy(), masks["atom37_atom_exists"].numpy(), bb, chi


@pytest.fixture(scope="module")
def structure():
    """Two synthetic two-chain templates (chains A and B as in :func:`pair_inputs`): aatype [2, R],
    atom37 positions [2, R, 37, 3] and mask [2, R, 37], plus the backbones and χ they were built from.

    The two sequences hold all 20 residue types; template 1's residues 7 and 8,
    which :func:`template_batch` strips, have a side chain beyond Cβ (7) and a
    Cγ that χ1 runs through (8).
    """
    from alphafold.common import residue_constants as rc

    rng = np.random.default_rng(2024)
    seq = np.concatenate([rng.permutation(20), rng.integers(0, 20, size=2 * N_RES - 20)])
    for slot, letters in ((N_RES + 7, "KR"), (N_RES + 8, "MLEQ")):
        j = np.flatnonzero(np.isin(seq, [rc.restype_order[x] for x in letters]))[0]
        seq[[slot, j]] = seq[[j, slot]]
    seq = seq.reshape(2, N_RES).astype(np.int32)
    built = [ideal_chain(a, rng, chain_starts=(CHAIN_A,)) for a in seq]
    pos, mask, bb, chi = (np.stack(x) for x in zip(*built))
    return seq, pos.astype(np.float32), mask.astype(np.float32), bb, chi


def template_batch(structure, num_templates=4):
    """Templates from the synthetic structures (with noise): a complete one, one with a
    gap residue, a residue without CA (degenerate frame), one without CB and side
    chain, a missing side-chain atom and an UNK, and empty padding templates
    (aatype 0, no atoms: two identical ones when num_templates is 4)."""
    aatype, pos, mask = structure[:3]
    rng = np.random.default_rng(0)
    aa, xyz, am = [], [], []
    for i in range(num_templates):
        a, p, m = aatype[min(i, 1)].copy(), pos[min(i, 1)].copy(), mask[min(i, 1)].copy()
        p = p + rng.normal(scale=0.3, size=p.shape).astype(np.float32)
        if i == 1:
            m[3] = 0.0
            a[3] = 21  # an alignment gap: no atoms
            m[5, 1] = 0.0  # no CA: no backbone frame
            m[7, 3:] = 0.0  # no CB and no side chain: no pseudo-β, no chi
            m[8, 5] = 0.0  # one side-chain atom missing
            a[9] = 20  # UNK: no chi
        if i >= 2:
            a[:] = 0
            m[:] = 0.0
        p = p * m[..., None]
        aa.append(a), xyz.append(p), am.append(m)
    return np.stack(aa).astype(np.int32), np.stack(xyz).astype(np.float32), np.stack(am).astype(np.float32)


def pair_inputs(seed=0, c=C_Z):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(N_RES, N_RES, c)).astype(np.float32)
    seq_mask = np.ones(N_RES, np.float32)
    seq_mask[-1] = 0.0  # a padded residue
    asym_id = np.where(np.arange(N_RES) < CHAIN_A, 1, 2)
    multichain = asym_id[:, None] == asym_id[None, :]
    return query, (seq_mask[:, None] * seq_mask[None, :]).astype(np.float32), multichain


# --------------------------------------------------------------------------- features


def test_synthetic_templates_are_protein_like(structure):
    """The test's own templates: the atoms reproduce the backbone and χ they were built from
    (AlphaFold's compute_chi_angles, modulo 2π), with protein bond geometry."""
    from alphafold.common import residue_constants as rc
    from alphafold.model import all_atom_multimer, geometry

    aatype, pos, mask, bb, chi = structure
    assert sorted(set(aatype.ravel().tolist())) == list(range(20))
    assert np.abs(pos[..., :3, :] - bb).max() < 1e-4
    assert 1.0 < np.abs(pos).max() < 60.0
    for t in range(aatype.shape[0]):
        np.testing.assert_array_equal(mask[t], np.asarray(rc.STANDARD_ATOM_MASK)[aatype[t]])
        ours, chi_mask = (np.asarray(x) for x in all_atom_multimer.compute_chi_angles(
            geometry.Vec3Array.from_array(pos[t]), mask[t], aatype[t]))
        wrapped = ((ours - chi[t] + np.pi) % (2 * np.pi) - np.pi) * chi_mask
        assert np.abs(wrapped).max() < 1e-4, np.abs(wrapped).max()
        ca, bonded = pos[t, :, 1], np.arange(N_RES - 1) != CHAIN_A - 1
        ca_ca = np.linalg.norm(ca[1:] - ca[:-1], axis=-1)
        np.testing.assert_allclose(ca_ca[bonded], 3.8, atol=0.05)  # trans peptides
        assert ca_ca[~bonded].min() > 6.0  # the chain break between A and B
        c_n = np.linalg.norm(pos[t, 1:, 0] - pos[t, :-1, 2], axis=-1)[bonded]
        np.testing.assert_allclose(c_n, 1.33, atol=0.02)
        o_n = np.linalg.norm(pos[t, 1:, 0] - pos[t, :-1, 4], axis=-1)[bonded]
        np.testing.assert_allclose(o_n, 2.25, atol=0.05)  # O trans to the next N: ψ in AlphaFold's convention
        d = np.linalg.norm(ca[:, None] - ca[None, :], axis=-1)
        assert d[np.triu_indices(N_RES, 2)].min() > 4.0  # no CA clashes


def test_chi_features_match_compute_chi_angles(structure):
    from alphafold.model import all_atom_multimer, geometry

    aa, xyz, am = template_batch(structure)

    def ref_fn(aatype, pos, mask):  # template_embedding_1d's features
        angles, masks = [], []
        for i in range(aatype.shape[0]):
            a, m = all_atom_multimer.compute_chi_angles(geometry.Vec3Array.from_array(pos[i]), mask[i], aatype[i])
            angles.append(a), masks.append(m)
        chi, chi_mask = jnp.stack(angles), jnp.stack(masks)
        feats = jnp.concatenate([jax.nn.one_hot(aatype, 22), jnp.sin(chi) * chi_mask, jnp.cos(chi) * chi_mask,
                                 chi_mask], axis=-1)
        return chi, chi_mask, feats, chi_mask[:, :, 0]

    chi, chi_mask, feats, row_mask = (np.asarray(x) for x in jax.jit(ref_fn)(aa, xyz, am))
    with torch.inference_mode():
        ours_chi, ours_mask = tf.chi_angles(as_tensor(aa), as_tensor(xyz), as_tensor(am))
        ours_feats, ours_row_mask = tf.template_single_features(as_tensor(aa), as_tensor(xyz), as_tensor(am))
    np.testing.assert_array_equal(ours_mask.numpy(), chi_mask)
    np.testing.assert_array_equal(ours_row_mask.numpy(), row_mask)
    assert 0 < chi_mask.sum() < chi_mask.size
    assert not chi_mask[1, [3, 7, 8, 9]].any()  # gap, no side chain, no CG, UNK
    assert_close("chi angles (where defined)", ours_chi.numpy() * chi_mask, chi * chi_mask, 1e-5)
    assert_close("template single features", ours_feats, feats, 1e-5)


def test_unit_vectors_and_distogram_match_single_template_embedding(structure):
    """The geometric pair features, as SingleTemplateEmbedding.construct_input computes them, jitted."""
    from alphafold.model import folding_multimer, geometry, modules

    aa, xyz, am = template_batch(structure)
    _, _, multichain = pair_inputs()
    dg = template_config().dgram_features

    def ref_fn(aatype, pos, mask, multichain_mask_2d):
        template_positions, pseudo_beta_mask = modules.pseudo_beta_fn(aatype, pos, mask)
        pb_mask_2d = pseudo_beta_mask[:, None] * pseudo_beta_mask[None, :]
        pb_mask_2d *= multichain_mask_2d
        dgram = modules.dgram_from_positions(template_positions, **dg) * pb_mask_2d[..., None]
        rigid, backbone_mask = folding_multimer.make_backbone_affine(geometry.Vec3Array.from_array(pos), mask, aatype)
        unit = rigid[:, None].inverse().apply_to_point(rigid.translation).normalized()
        bb_mask_2d = backbone_mask[:, None] * backbone_mask[None, :]
        bb_mask_2d *= multichain_mask_2d
        return dgram, pb_mask_2d, jnp.stack([unit.x, unit.y, unit.z], -1) * bb_mask_2d[..., None], bb_mask_2d

    worst_uv = worst_native = 0.0
    diagonal_junk = 0
    for t in range(aa.shape[0]):
        args = (aa[t], xyz[t], am[t])
        dgram, pb_mask_2d, unit, bb_mask_2d = (np.asarray(x) for x in jax.jit(ref_fn)(*args, multichain))
        eager_unit = np.asarray(ref_fn(*args, multichain)[2])
        with torch.inference_mode():
            pos, mask, mc = as_tensor(xyz[t]), as_tensor(am[t]), torch.from_numpy(multichain)
            ours_dgram, ours_pb_mask = tf.pseudo_beta_distogram(as_tensor(aa[t]), pos, mask, mc, dg.num_bins,
                                                                dg.min_bin, dg.max_bin)
            ours_unit, ours_bb_mask = tf.colabfold_unit_vectors(pos, mask, mc)
            native_unit, native_bb_mask = tf.backbone_unit_vectors(pos, mask, mc)
        np.testing.assert_array_equal(ours_dgram.numpy(), dgram)
        np.testing.assert_array_equal(ours_pb_mask.numpy(), pb_mask_2d)
        np.testing.assert_array_equal(ours_bb_mask.numpy(), bb_mask_2d)
        np.testing.assert_array_equal(native_bb_mask.numpy(), bb_mask_2d)
        worst_uv = max(worst_uv, float(np.abs(ours_unit.numpy() - unit).max()))
        # The torch version of the same algebra: eager JAX to rounding; jitted JAX off the diagonal.
        off = ~np.eye(N_RES, dtype=bool)
        assert_close(f"unit vectors (torch) vs eager[{t}]", native_unit, eager_unit, 1e-5)
        worst_native = max(worst_native, float(np.abs(native_unit.numpy() - unit)[off].max()))
        assert not np.diagonal(native_unit.numpy(), axis1=0, axis2=1).any()
        diagonal_junk += int(np.abs(np.diagonal(unit, axis1=0, axis2=1)).max(axis=0).__gt__(0.1).sum())
    print(f"unit vectors (jitted ColabFold) vs jitted haiku: max|d|={worst_uv:.3e}; torch off the diagonal: "
          f"max|d|={worst_native:.3e}; residues whose jitted self-vector has length > 0.1: {diagonal_junk}")
    assert worst_uv < 1e-6  # both jitted: the same self-vectors (XLA rounds each graph its own way, to 1 ulp)
    assert worst_native < 1e-5
    assert not bb_mask_2d.any()  # the last (padding) template has no backbone


# --------------------------------------------------------------------------- modules


def test_template_embedding_iteration():
    cfg, gc = template_config(), fp32_multimer_global_config()
    rng = np.random.default_rng(1)
    act = rng.normal(size=(N_RES, N_RES, C_T)).astype(np.float32)
    _, pair_mask, _ = pair_inputs()
    pair_mask[0, 3] = 0.0  # an asymmetric hole

    def build(a, pm):
        return modules_multimer.TemplateEmbeddingIteration(cfg.template_pair_stack, gc)(a, pm, is_training=False)

    flat, ref = haiku_reference(build, act, pair_mask)
    out = run_torch(TemplateEmbeddingIteration(cfg.template_pair_stack, C_T), flat, "template_embedding_iteration",
                    act, pair_mask)
    assert_close("template_embedding_iteration", out, ref, REL_TOL)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_single_template_embedding(structure, which):
    from alphafold.model import prng

    cfg, gc = template_config(), fp32_multimer_global_config()
    aa, xyz, am = template_batch(structure)
    query, pair_mask, multichain = pair_inputs()

    def build(q, a, p, m, pm, mc):
        return modules_multimer.SingleTemplateEmbedding(cfg, gc)(q, a, p, m, pm, mc, is_training=False,
                                                                 safe_key=prng.SafeKey(hk.next_rng_key()))

    flat, ref = haiku_reference(build, query, aa[which], xyz[which], am[which], pair_mask, multichain)
    module = SingleTemplateEmbedding(cfg, C_Z)
    assert len(module.template_embedding_iteration) == 2
    out = run_torch(module, flat, "single_template_embedding", query, aa[which], xyz[which], am[which],
                    pair_mask, multichain)
    assert_close(f"single_template_embedding[{which}]", out, ref, REL_TOL)


def _haiku_template_embedding(structure, num_templates, mask_dtype):
    cfg, gc = template_config(), fp32_multimer_global_config()
    aa, xyz, am = template_batch(structure, num_templates)
    query, pair_mask, multichain = pair_inputs()
    if mask_dtype == "float":
        multichain = multichain.astype(np.float32)

    def build(q, a, p, m, pm, mc):
        batch = {"template_aatype": a, "template_all_atom_positions": p, "template_all_atom_mask": m}
        return modules_multimer.TemplateEmbedding(cfg, gc)(q, batch, pm, mc, is_training=False)

    flat, ref = haiku_reference(build, query, aa, xyz, am, pair_mask, multichain)
    return cfg, flat, ref, (query, aa, xyz, am, pair_mask, multichain)


@pytest.fixture(scope="module")
def four_templates(structure):
    """Two chains, a padded residue, a damaged template and two identical empty ones."""
    return _haiku_template_embedding(structure, 4, "bool")


def test_template_embedding(four_templates):
    cfg, flat, ref, inputs = four_templates
    assert "template_embedding/output_linear//weights" in flat
    out = run_torch(TemplateEmbedding(cfg, C_Z), flat, "template_embedding", *inputs)
    assert_close("template_embedding[T=4, bool multichain mask]", out, ref, REL_TOL)
    assert np.abs(np.asarray(ref)).max() > 0.1


def test_template_embedding_two_templates_float_mask(structure):
    cfg, flat, ref, inputs = _haiku_template_embedding(structure, 2, "float")
    out = run_torch(TemplateEmbedding(cfg, C_Z), flat, "template_embedding", *inputs)
    assert_close("template_embedding[T=2, float multichain mask]", out, ref, REL_TOL)


def test_template_embedding_in_row_slices(four_templates):
    """Small slices (the feature construction, attention and transitions run row by row): the same numbers."""
    from af2cpu_plugin.engine.policy import RuntimePolicy

    cfg, flat, ref, inputs = four_templates
    with RuntimePolicy(subbatch_size=3).active():
        out = run_torch(TemplateEmbedding(cfg, C_Z), flat, "template_embedding", *inputs)
    assert_close("template_embedding[T=4, subbatch_size=3]", out, ref, REL_TOL)


def test_template_embedding_bf16_policy(four_templates):
    """Under a bf16 policy, in the trunk's bf16 region: runs, bf16 out, near the fp32 result."""
    from af2cpu_plugin.engine.policy import RuntimePolicy, trunk_precision

    cfg, flat, ref, inputs = four_templates
    with RuntimePolicy(precision="bf16").active(), trunk_precision():
        out = run_torch(TemplateEmbedding(cfg, C_Z), flat, "template_embedding", *inputs)
    assert out.dtype == torch.bfloat16
    assert_close("template_embedding[T=4, bf16 policy]", out.float(), ref, 5e-2)


class _Evoformer(hk.Module):
    """An ``evoformer`` scope, as in the model, for template_embedding_1d's flat Linears."""

    def __init__(self):
        super().__init__(name="evoformer")

    def __call__(self, aatype, pos, mask, num_channel, gc):
        batch = {"template_aatype": aatype, "template_all_atom_positions": pos, "template_all_atom_mask": mask}
        return modules_multimer.template_embedding_1d(batch, num_channel, gc)


def test_template_embedding_1d(structure):
    gc = fp32_multimer_global_config()
    aa, xyz, am = template_batch(structure)
    flat, (ref_act, ref_mask) = haiku_reference(lambda a, p, m: _Evoformer()(a, p, m, C_M, gc), aa, xyz, am)
    assert set(k.split("//")[0] for k in flat) == {"evoformer/template_single_embedding",
                                                   "evoformer/template_projection"}
    module = TemplateSingleEmbedding(C_M)
    act, mask = run_torch(module, flat, "evoformer", aa, xyz, am)
    assert_close("template_embedding_1d activations", act, ref_act, REL_TOL)
    np.testing.assert_array_equal(mask.numpy(), np.asarray(ref_mask))
    assert 0 < np.asarray(ref_mask).sum() < ref_mask.size


# --------------------------------------------------------------------------- full-size params


def test_expected_params_match_full_multimer_v3():
    """Every haiku key and shape of the real multimer v3 template modules (fused tri-mult)."""
    from alphafold.model import config

    cfg = config.model_config("model_1_multimer_v3").model
    gc = fp32_multimer_global_config()
    c = cfg.embeddings_and_evoformer
    assert c.template.template_pair_stack.triangle_multiplication_outgoing.fuse_projection_weights
    num_res, num_templates = 3, 1

    class Evoformer(hk.Module):
        def __init__(self):
            super().__init__(name="evoformer")

        def __call__(self, q, a, p, m, pm, mc):
            batch = {"template_aatype": a, "template_all_atom_positions": p, "template_all_atom_mask": m}
            pair = modules_multimer.TemplateEmbedding(c.template, gc)(q, batch, pm, mc, is_training=False)
            rows = modules_multimer.template_embedding_1d(batch, c.msa_channel, gc)
            return pair, rows

    args = (np.zeros((num_res, num_res, c.pair_channel), np.float32), np.zeros((num_templates, num_res), np.int32),
            np.zeros((num_templates, num_res, 37, 3), np.float32), np.zeros((num_templates, num_res, 37), np.float32),
            np.ones((num_res, num_res), np.float32), np.ones((num_res, num_res), bool))
    fn = hk.transform(lambda *x: Evoformer()(*x))
    shapes = jax.eval_shape(lambda: fn.init(jax.random.PRNGKey(0), *args))
    want = {f"{scope}//{name}": tuple(v.shape) for scope, d in shapes.items() for name, v in d.items()}

    ours = expected_params(TemplateEmbedding(c.template, c.pair_channel), root="evoformer/template_embedding")
    ours.update(expected_params(TemplateSingleEmbedding(c.msa_channel), root="evoformer"))
    assert sorted(set(want) - set(ours)) == []
    assert sorted(set(ours) - set(want)) == []
    assert {k: v for k, v in ours.items() if want[k] != v} == {}
    assert want["evoformer/template_embedding/single_template_embedding/template_pair_embedding_1//weights"] == (64,)
    assert len(want) == 78, len(want)
