"""Parity of the torch multimer structure module with ColabFold's haiku one (folding_multimer.py), fp32."""

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
from af2cpu_plugin.engine.geometry import Rigids, rigids_mul_rigids
from af2cpu_plugin.engine.multimer.structure import (
    InvariantPointAttention,
    QuatRigid,
    StructureModule,
    rot_from_quaternion,
)
from af2cpu_plugin.engine.params import bind_params, expected_params
from af2cpu_plugin.engine.policy import RuntimePolicy
from af2cpu_plugin.testing.oracle import fp32_multimer_global_config, haiku_reference, max_mean_abs

L = 13
SINGLE, PAIR = 24, 8  # single != num_channel, so the two sidechain input projections differ in shape
MODEL = "model_1_multimer_v3"



def reduced_config():
    from alphafold.model import config

    c = copy.deepcopy(config.model_config(MODEL).model.heads.structure_module)
    c.num_channel = 32
    c.num_head = 4
    c.num_scalar_qk = 8
    c.num_scalar_v = 6
    c.num_point_qk = 3
    c.num_point_v = 5
    c.num_layer = 4
    c.sidechain.num_channel = 16
    return c


def random_rigids_np(rng, n=L, trans_scale=3.0):
    """Random unit quaternions (w, x, y, z) and translations."""
    quat = rng.normal(size=(n, 4)).astype(np.float32)
    quat /= np.linalg.norm(quat, axis=-1, keepdims=True)
    trans = rng.normal(scale=trans_scale, size=(n, 3)).astype(np.float32)
    return quat, trans


def haiku_rigid(quat, trans):
    from alphafold.model import geometry

    rot = geometry.Rot3Array.from_quaternion(*[quat[..., i] for i in range(4)], normalize=True)
    return geometry.Rigid3Array(rot, geometry.Vec3Array(*[trans[..., i] for i in range(3)]))


def torch_rigids(quat, trans):
    q = torch.from_numpy(quat)
    return Rigids(rot_from_quaternion(*q.unbind(-1)), torch.from_numpy(trans))


def assert_close(name, got, want, tol):
    got = got.detach().numpy() if hasattr(got, "detach") else np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.isfinite(got).all(), f"{name}: non-finite output"
    mx, mean = max_mean_abs(got, want)
    print(f"{name}: max |Δ| {mx:.3g}, mean {mean:.3g} (max |ref| {np.abs(want).max():.3g})")
    assert mx < tol, f"{name}: max |Δ| {mx:.3g} (mean {mean:.3g}) >= {tol}"
    return mx, mean


def test_rot_from_quaternion_matches_rot3array():
    rng = np.random.default_rng(0)
    quat = rng.normal(scale=2.0, size=(L, 4)).astype(np.float32)  # not unit: normalised inside
    quat[0] = 0.0  # the eps clip: zero matrix-part, no NaN
    ref = haiku_rigid(quat, np.zeros((L, 3), np.float32)).rotation.to_array()
    got = rot_from_quaternion(*torch.from_numpy(quat).unbind(-1))
    assert_close("Rot3Array.from_quaternion", got, ref, 1e-6)


def test_quat_rigid_composition_matches_haiku():
    """QuatRigid's rigid and ``rigid @ rigid_update`` (Alg. 23)."""
    from alphafold.model import folding_multimer

    gc = fp32_multimer_global_config()
    rng = np.random.default_rng(1)
    act = rng.normal(size=(L, 32)).astype(np.float32)
    quat, trans = random_rigids_np(rng)

    def build(a, q, t):
        upd = folding_multimer.QuatRigid(gc, init="linear")(a)
        return upd.to_array(), (haiku_rigid(q, t) @ upd).to_array()

    params, (ref_upd, ref_new) = haiku_reference(build, act, quat, trans)
    mod = QuatRigid(32).eval()
    bind_params(mod, params, root="quat_rigid")
    with torch.inference_mode():
        upd = mod(torch.from_numpy(act))
        new = rigids_mul_rigids(torch_rigids(quat, trans), upd)
    to_array = lambda r: torch.cat([r.rot, r.trans[..., None]], dim=-1)  # Rigid3Array.to_array: [..., 3, 4]
    assert_close("QuatRigid rigid", to_array(upd), ref_upd, 1e-5)
    assert_close("rigid @ rigid_update", to_array(new), ref_new, 1e-5)


def test_invariant_point_attention_matches_haiku():
    from alphafold.model import folding_multimer

    cfg, gc = reduced_config(), fp32_multimer_global_config()
    rng = np.random.default_rng(2)
    inputs_1d = rng.normal(size=(L, cfg.num_channel)).astype(np.float32)
    inputs_2d = rng.normal(size=(L, L, PAIR)).astype(np.float32)
    mask = np.ones((L, 1), np.float32)
    mask[-1] = 0.0
    quat, trans = random_rigids_np(rng)

    def build(x1, x2, m, q, t):
        return folding_multimer.InvariantPointAttention(cfg, gc)(x1, x2, m, haiku_rigid(q, t))

    params, ref = haiku_reference(build, inputs_1d, inputs_2d, mask, quat, trans)
    ipa = InvariantPointAttention(cfg, cfg.num_channel, PAIR).eval()
    assert set(expected_params(ipa, root="invariant_point_attention")) == set(params)
    bind_params(ipa, params, root="invariant_point_attention")
    args = (torch.from_numpy(inputs_1d), torch.from_numpy(inputs_2d), torch.from_numpy(mask))
    with torch.inference_mode():
        out = ipa(*args, torch_rigids(quat, trans))
    assert np.abs(ref).max() > 0.1
    assert_close("IPA output (unmasked rows)", out[:-1], ref[:-1], 1e-5)
    # A masked query row attends with every logit near -1e5 * sqrt(1/3), where an fp32 ulp is
    # ~4e-3: its weights carry that rounding whatever the order of the sums (haiku's too).
    assert_close("IPA output (masked row)", out[-1:], ref[-1:], 1e-2)

    # Query-row chunking (the runtime policy's subbatch size) changes nothing but rounding.
    with RuntimePolicy(subbatch_size=4).active(), torch.inference_mode():
        chunked = ipa(*args, torch_rigids(quat, trans))
    assert_close("IPA chunked vs whole", chunked, out, 1e-5)


def test_all_atom_functions_match_all_atom_multimer():
    """The monomer's all_atom functions, reused, against all_atom_multimer on Rigid3Array."""
    import jax.numpy as jnp
    from alphafold.model import all_atom_multimer as am

    rng = np.random.default_rng(3)
    aatype = rng.integers(0, 21, size=L).astype(np.int32)
    quat, trans = random_rigids_np(rng, trans_scale=30.0)
    sin_cos = rng.normal(size=(L, 7, 2)).astype(np.float32)
    sin_cos /= np.linalg.norm(sin_cos, axis=-1, keepdims=True)

    ref_frames = am.torsion_angles_to_frames(jnp.asarray(aatype), haiku_rigid(quat, trans), jnp.asarray(sin_cos))
    ref14 = am.frames_and_literature_positions_to_atom14_pos(jnp.asarray(aatype), ref_frames).to_array()
    ref37 = am.atom14_to_atom37(ref14, jnp.asarray(aatype))

    aat = torch.from_numpy(aatype).long()
    frames = torsion_angles_to_frames(aat, torch_rigids(quat, trans), torch.from_numpy(sin_cos))
    pos14 = frames_and_literature_positions_to_atom14_pos(aat, frames)
    maps = make_atom14_masks(aat)
    pos37 = atom14_to_atom37(pos14, maps["residx_atom37_to_atom14"], maps["atom37_atom_exists"])
    assert_close("frames [N, 8, 3, 4]", torch.cat([frames.rot, frames.trans[..., None]], -1),
                 ref_frames.to_array(), 1e-4)
    assert_close("atom14 positions (Å)", pos14, ref14, 1e-4)
    assert_close("atom37 positions (Å)", pos37, ref37, 1e-4)
    np.testing.assert_array_equal(maps["atom37_atom_exists"].numpy(), np.asarray(am.get_atom37_mask(aatype)))
    np.testing.assert_array_equal(maps["atom14_atom_exists"].numpy(), np.asarray(am.get_atom14_mask(aatype)))


@pytest.fixture(scope="module")
def structure_module_case():
    from alphafold.model import folding_multimer

    cfg, gc = reduced_config(), fp32_multimer_global_config()
    rng = np.random.default_rng(4)
    single = rng.normal(size=(L, SINGLE)).astype(np.float32)
    pair = rng.normal(size=(L, L, PAIR)).astype(np.float32)
    aatype = rng.integers(0, 21, size=L).astype(np.int32)
    aatype[:3] = [5, 20, 19]  # at least one UNK
    seq_mask = np.ones(L, np.float32)
    seq_mask[-1] = 0.0  # one padded residue
    batch = {"seq_mask": seq_mask, "aatype": aatype}

    def build(s, z, b):
        return folding_multimer.StructureModule(cfg, gc)({"single": s, "pair": z}, b, is_training=False)

    params, ref = haiku_reference(build, single, pair, batch)
    model = StructureModule(cfg, SINGLE, PAIR).eval()
    bind_params(model, params, root="structure_module")
    t = {"seq_mask": torch.from_numpy(seq_mask), "aatype": torch.from_numpy(aatype).long()}
    with torch.inference_mode():
        out = model(torch.from_numpy(single), torch.from_numpy(pair), t)
    return params, ref, out, model


def test_structure_module_param_names(structure_module_case):
    params, _, _, model = structure_module_case
    want = expected_params(model, root="structure_module")
    assert want == {k: tuple(v.shape) for k, v in params.items()}
    assert "structure_module/fold_iteration/quat_rigid/rigid//weights" in want
    assert "structure_module/fold_iteration/invariant_point_attention/q_point_projection/point_projection//weights" in want
    assert "structure_module/fold_iteration/rigid_sidechain/resblock2_1//weights" in want


def test_structure_module_matches_haiku(structure_module_case):
    _, ref, out, _ = structure_module_case
    assert set(out) == set(ref) == {"final_atom_positions", "final_atom_mask", "act"}
    assert out["final_atom_positions"].shape == (L, 37, 3)
    # The comparison is meaningful: the chain is spread over Å, not collapsed to the origin.
    assert np.abs(ref["final_atom_positions"]).max() > 5.0
    assert_close("act (unmasked rows)", out["act"][:-1], ref["act"][:-1], 1e-3)
    # The padded residue's own IPA row is ill-conditioned (see the IPA test); nothing else reads it.
    assert_close("act (masked row)", out["act"][-1:], ref["act"][-1:], 5e-2)
    assert_close("final_atom_positions (Å)", out["final_atom_positions"], ref["final_atom_positions"], 1e-3)
    np.testing.assert_array_equal(out["final_atom_mask"].numpy(), ref["final_atom_mask"])
    assert out["final_atom_mask"][-1].sum() == 0 and out["final_atom_positions"][-1].abs().sum() == 0


def test_full_config_param_shapes_match_haiku():
    """ColabFold's real multimer v3 config: the same keys and shapes as haiku's init (shapes only)."""
    import haiku as hk
    import jax
    from alphafold.model import config, folding_multimer

    cfg = config.model_config(MODEL).model
    sm_cfg, gc = cfg.heads.structure_module, fp32_multimer_global_config()
    c_s, c_z = cfg.embeddings_and_evoformer.seq_channel, cfg.embeddings_and_evoformer.pair_channel
    n = 4
    batch = {"seq_mask": np.ones(n, np.float32), "aatype": np.zeros(n, np.int32)}

    def build(s, z, b):
        return folding_multimer.StructureModule(sm_cfg, gc)({"single": s, "pair": z}, b, is_training=False)

    fn = hk.transform(build)
    shapes = jax.eval_shape(fn.init, jax.random.PRNGKey(0), np.zeros((n, c_s), np.float32),
                            np.zeros((n, n, c_z), np.float32), batch)
    haiku_shapes = {f"{scope}//{name}": tuple(v.shape) for scope, d in shapes.items() for name, v in d.items()}
    ours = expected_params(StructureModule(sm_cfg, c_s, c_z), root="structure_module")
    assert ours == haiku_shapes
    # Under the full model's root scope, as the real files name them (the model registers it as structure_module).
    full = expected_params(StructureModule(sm_cfg, c_s, c_z), root="alphafold/alphafold_iteration/structure_module")
    assert full == {f"alphafold/alphafold_iteration/{k}": v for k, v in haiku_shapes.items()}
