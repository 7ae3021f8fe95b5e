"""Parity of the torch structure module with ColabFold's haiku one (folding.py), fp32."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest
import torch

from af2cpu_plugin.engine.all_atom import (
    atom14_to_atom37,
    frames_and_literature_positions_to_atom14_pos,
    make_atom14_masks,
    torsion_angles_to_frames,
)
from af2cpu_plugin.engine.geometry import QuatAffine, Rigids, rigids_from_quataffine
from af2cpu_plugin.engine.params import bind_params, expected_params
from af2cpu_plugin.engine.structure import InvariantPointAttention, StructureModule
from af2cpu_plugin.testing.oracle import fp32_global_config, haiku_reference, max_mean_abs

L = 13
SINGLE, PAIR = 24, 8  # single != num_channel, so the two sidechain input projections differ in shape


def reduced_config():
    from alphafold.model import config

    c = copy.deepcopy(config.model_config("model_3_ptm").model.heads.structure_module)
    c.num_channel = 32
    c.num_head = 4
    c.num_scalar_qk = 8
    c.num_scalar_v = 8
    c.num_point_qk = 3
    c.num_point_v = 4
    c.num_layer = 3
    c.sidechain.num_channel = 16
    return c


def random_aatype(rng, n=L):
    return rng.integers(0, 20, size=n).astype(np.int32)


def random_quat_affine_np(rng, n=L):
    quat = rng.normal(size=(n, 4)).astype(np.float32)
    quat /= np.linalg.norm(quat, axis=-1, keepdims=True)
    trans = rng.normal(scale=3.0, size=(n, 3)).astype(np.float32)
    return quat, trans


def assert_close(name, got, want, tol):
    mx, mean = max_mean_abs(got, want)
    print(f"{name}: max |Δ| {mx:.3g}, mean {mean:.3g}")
    assert mx < tol, f"{name}: max |Δ| {mx:.3g} (mean {mean:.3g}) >= {tol}"
    return mx, mean


def test_atom14_masks_match_alphafold_tables():
    from alphafold.model import all_atom_multimer as am

    aatype = torch.arange(21)
    maps = make_atom14_masks(aatype)
    np.testing.assert_array_equal(maps["atom14_atom_exists"].numpy(), am.RESTYPE_ATOM14_MASK)
    np.testing.assert_array_equal(maps["atom37_atom_exists"].numpy(), am.RESTYPE_ATOM37_MASK)
    np.testing.assert_array_equal(maps["residx_atom14_to_atom37"].numpy(), am.RESTYPE_ATOM14_TO_ATOM37)
    np.testing.assert_array_equal(maps["residx_atom37_to_atom14"].numpy(), am.RESTYPE_ATOM37_TO_ATOM14)


def test_quat_affine_matches_haiku():
    import jax.numpy as jnp
    from alphafold.model import quat_affine

    rng = np.random.default_rng(1)
    quat, trans = random_quat_affine_np(rng)
    update = rng.normal(scale=0.5, size=(L, 6)).astype(np.float32)
    pts = rng.normal(size=(L, 5, 3)).astype(np.float32)

    ref = quat_affine.QuatAffine(jnp.asarray(quat * 1.7), jnp.asarray(trans), unstack_inputs=True)
    ref_new = ref.pre_compose(jnp.asarray(update)).scale_translation(10.0)
    ref_pts = ref_new.apply_to_point([jnp.asarray(pts[..., i]) for i in range(3)], extra_dims=1)
    ref_inv = ref_new.invert_point([jnp.asarray(pts[..., i]) for i in range(3)], extra_dims=1)

    aff = QuatAffine.create(torch.from_numpy(quat * 1.7), torch.from_numpy(trans))
    new = aff.pre_compose(torch.from_numpy(update)).scale_translation(10.0)
    assert_close("affine tensor", new.to_tensor(), ref_new.to_tensor(), 1e-5)
    assert_close("rotation", new.rotation, quat_affine.rot_list_to_tensor(ref_new.rotation), 1e-6)
    assert_close("apply_to_point", new.apply_to_point(torch.from_numpy(pts), 1), np.stack(ref_pts, -1), 1e-4)
    assert_close("invert_point", new.invert_point(torch.from_numpy(pts), 1), np.stack(ref_inv, -1), 1e-4)


def test_invariant_point_attention_matches_haiku():
    from alphafold.model import folding, quat_affine

    cfg, gc = reduced_config(), fp32_global_config()
    rng = np.random.default_rng(2)
    inputs_1d = rng.normal(size=(L, cfg.num_channel)).astype(np.float32)
    inputs_2d = rng.normal(size=(L, L, PAIR)).astype(np.float32)
    mask = np.ones((L, 1), np.float32)
    mask[-1] = 0.0
    quat, trans = random_quat_affine_np(rng)

    def build(x1, x2, m, q, t):
        affine = quat_affine.QuatAffine(q, t, unstack_inputs=True)
        return folding.InvariantPointAttention(cfg, gc)(x1, x2, m, affine)

    params, ref = haiku_reference(build, inputs_1d, inputs_2d, mask, quat, trans)
    ipa = InvariantPointAttention(cfg, cfg.num_channel, PAIR).eval()
    bind_params(ipa, params, root="invariant_point_attention")
    with torch.inference_mode():
        affine = QuatAffine.create(torch.from_numpy(quat), torch.from_numpy(trans))
        out = ipa(torch.from_numpy(inputs_1d), torch.from_numpy(inputs_2d), torch.from_numpy(mask), affine)
    assert_close("IPA output", out, ref, 1e-4)

    # Query-row chunking (the runtime policy's subbatch size) changes nothing but rounding.
    from af2cpu_plugin.engine.policy import RuntimePolicy

    with RuntimePolicy(subbatch_size=4).active(), torch.inference_mode():
        chunked = ipa(torch.from_numpy(inputs_1d), torch.from_numpy(inputs_2d), torch.from_numpy(mask), affine)
    assert_close("IPA chunked vs whole", chunked, out, 1e-5)

    # The structure module hands IPA LayerNorm(pair) made slice by slice where it is read (RowMapped),
    # from a bf16 pair too: the same numbers as normalising the whole (fp32) pair first.
    from af2cpu_plugin.engine.chunking import RowMapped
    from af2cpu_plugin.engine.primitives import LayerNorm

    norm = LayerNorm(PAIR)
    norm.scale.data.normal_()
    norm.offset.data.normal_()
    pair = torch.from_numpy(inputs_2d).to(torch.bfloat16)
    x1, m = torch.from_numpy(inputs_1d), torch.from_numpy(mask)
    with RuntimePolicy(precision="bf16", subbatch_size=4).active(), torch.inference_mode():
        lazy = ipa(x1, RowMapped(pair, norm), m, affine)
        eager = ipa(x1, norm(pair.float()), m, affine)
    assert torch.equal(lazy, eager)
    with torch.inference_mode():  # unsliced: made whole
        assert torch.equal(ipa(x1, RowMapped(pair, norm), m, affine), ipa(x1, norm(pair.float()), m, affine))


def test_torsion_frames_and_atom14_match_alphafold():
    import jax.numpy as jnp
    from alphafold.model import all_atom, quat_affine, r3

    rng = np.random.default_rng(3)
    aatype = random_aatype(rng)
    quat, trans = random_quat_affine_np(rng)
    trans = trans * 10.0
    sin_cos = rng.normal(size=(L, 7, 2)).astype(np.float32)
    sin_cos /= np.linalg.norm(sin_cos, axis=-1, keepdims=True)

    ref_affine = quat_affine.QuatAffine(jnp.asarray(quat), jnp.asarray(trans), unstack_inputs=True)
    ref_frames = all_atom.torsion_angles_to_frames(
        jnp.asarray(aatype), r3.rigids_from_quataffine(ref_affine), jnp.asarray(sin_cos)
    )
    ref_pos = all_atom.frames_and_literature_positions_to_atom14_pos(jnp.asarray(aatype), ref_frames)
    ref_rot = np.stack([np.asarray(x) for x in ref_frames.rot], -1).reshape(L, 8, 3, 3)
    ref_trans = np.stack([np.asarray(x) for x in ref_frames.trans], -1)
    ref_pos = np.asarray(r3.vecs_to_tensor(ref_pos))

    aat = torch.from_numpy(aatype).long()
    maps = make_atom14_masks(aat)
    batch = {k: v.numpy() for k, v in maps.items()}
    ref37 = np.asarray(all_atom.atom14_to_atom37(jnp.asarray(ref_pos), batch))

    affine = QuatAffine.create(torch.from_numpy(quat), torch.from_numpy(trans))
    frames = torsion_angles_to_frames(aat, rigids_from_quataffine(affine), torch.from_numpy(sin_cos))
    pos = frames_and_literature_positions_to_atom14_pos(aat, frames)
    pos37 = atom14_to_atom37(pos, maps["residx_atom37_to_atom14"], maps["atom37_atom_exists"])
    assert isinstance(frames, Rigids)
    assert_close("frame rotations", frames.rot, ref_rot, 1e-5)
    assert_close("frame translations (Å)", frames.trans, ref_trans, 1e-4)
    assert_close("atom14 positions (Å)", pos, ref_pos, 1e-4)
    assert_close("atom37 positions (Å)", pos37, ref37, 1e-4)


@pytest.fixture(scope="module")
def structure_module_case():
    from alphafold.model import folding

    cfg, gc = reduced_config(), fp32_global_config()
    rng = np.random.default_rng(4)
    single = rng.normal(size=(L, SINGLE)).astype(np.float32)
    pair = rng.normal(size=(L, L, PAIR)).astype(np.float32)
    aatype = random_aatype(rng)
    seq_mask = np.ones(L, np.float32)
    seq_mask[-1] = 0.0  # one padded residue
    maps = {k: v.numpy() for k, v in make_atom14_masks(torch.from_numpy(aatype)).items()}
    batch = {
        "seq_mask": seq_mask,
        "aatype": aatype,
        "residx_atom37_to_atom14": maps["residx_atom37_to_atom14"].astype(np.int32),
        "atom37_atom_exists": maps["atom37_atom_exists"],
        "atom14_atom_exists": maps["atom14_atom_exists"],
    }

    def build(s, z, b):
        # compute_loss=True returns the full dict (traj, affines, side chains); no loss is computed.
        return folding.StructureModule(cfg, gc, compute_loss=True)({"single": s, "pair": z}, b, is_training=False)

    params, ref = haiku_reference(build, single, pair, batch)
    model = StructureModule(cfg, SINGLE, PAIR).eval()
    bind_params(model, params, root="structure_module")
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    with torch.inference_mode():
        out = model(torch.from_numpy(single), torch.from_numpy(pair), t)
        # Without the atom maps in the batch, they are derived from aatype: same result.
        out_derived = model(torch.from_numpy(single), torch.from_numpy(pair),
                            {"seq_mask": t["seq_mask"], "aatype": t["aatype"]})
    torch.testing.assert_close(out_derived["final_atom_positions"], out["final_atom_positions"], rtol=0, atol=0)
    return params, ref, out, model


def test_structure_module_param_names(structure_module_case):
    params, _, _, model = structure_module_case
    want = expected_params(model, root="structure_module")
    assert set(want) == set(params)
    assert "structure_module/fold_iteration/invariant_point_attention//trainable_point_weights" in want
    assert "structure_module/fold_iteration/rigid_sidechain/resblock2_1//weights" in want


def test_structure_module_matches_haiku(structure_module_case):
    _, ref, out, _ = structure_module_case
    assert set(out) >= {"final_atom_positions", "final_atom_mask", "representations", "final_affines", "traj"}
    assert out["final_atom_positions"].shape == (L, 37, 3)
    # The comparison is meaningful: the chain is spread over tens of Å.
    assert np.abs(ref["final_atom_positions"]).max() > 5.0
    assert_close("single act", out["representations"]["structure_module"], ref["representations"]["structure_module"], 1e-3)
    assert_close("traj (quaternion, Å)", out["traj"], ref["traj"], 1e-3)
    assert_close("final_affines", out["final_affines"], ref["final_affines"], 1e-3)
    assert_close("final_atom_positions (Å)", out["final_atom_positions"], ref["final_atom_positions"], 1e-3)
    assert_close("final_atom14_positions (Å)", out["final_atom14_positions"], ref["final_atom14_positions"], 1e-3)
    assert_close("angles_sin_cos", out["sidechains"]["angles_sin_cos"], ref["sidechains"]["angles_sin_cos"], 1e-4)
    np.testing.assert_array_equal(out["final_atom_mask"].numpy(), ref["final_atom_mask"])
    ref_frames_trans = np.stack([np.asarray(x) for x in ref["sidechains"]["frames"].trans], -1)
    assert_close("sidechain frame translations (Å)", out["sidechains"]["frames"].trans, ref_frames_trans, 1e-3)


def test_full_config_param_shapes_match_haiku():
    """ColabFold's real monomer config: same keys and shapes as haiku's init (shapes only)."""
    import haiku as hk
    import jax
    from alphafold.model import config, folding

    cfg = config.model_config("model_1_ptm").model
    sm_cfg, gc = cfg.heads.structure_module, fp32_global_config()
    c_s, c_z = cfg.embeddings_and_evoformer.seq_channel, cfg.embeddings_and_evoformer.pair_channel
    n = 4
    aatype = np.zeros(n, np.int32)
    maps = {k: v.numpy() for k, v in make_atom14_masks(torch.from_numpy(aatype)).items()}
    batch = {"seq_mask": np.ones(n, np.float32), "aatype": aatype,
             "residx_atom37_to_atom14": maps["residx_atom37_to_atom14"].astype(np.int32),
             "atom37_atom_exists": maps["atom37_atom_exists"], "atom14_atom_exists": maps["atom14_atom_exists"]}

    def build(s, z, b):
        return folding.StructureModule(sm_cfg, gc, compute_loss=False)({"single": s, "pair": z}, b, is_training=False)

    fn = hk.transform(build)
    shapes = jax.eval_shape(fn.init, jax.random.PRNGKey(0), np.zeros((n, c_s), np.float32),
                            np.zeros((n, n, c_z), np.float32), batch)
    haiku_shapes = {f"{scope}//{name}": tuple(v.shape) for scope, d in shapes.items() for name, v in d.items()}
    assert expected_params(StructureModule(sm_cfg, c_s, c_z), root="structure_module") == haiku_shapes
