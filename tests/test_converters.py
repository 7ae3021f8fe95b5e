"""The npz -> safetensors converter (af2cpu_plugin.converters) and the random weight files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from af2cpu_plugin import converters
from af2cpu_plugin.converters import ConversionError, params_cache
from af2cpu_plugin.engine.params import ParamsMismatch

TRI = "alphafold/alphafold_iteration/evoformer/evoformer_iteration/triangle_multiplication_outgoing"
TRI_IN = ("alphafold/alphafold_iteration/evoformer/template_embedding/single_template_embedding/"
          "template_pair_stack/__layer_stack_no_state/triangle_multiplication_incoming")
OTHER = "alphafold/alphafold_iteration/evoformer/preprocess_1d//weights"


def _unfused(rng, tri=TRI, stack=(2,), c=3, h=4):
    """An unfused triangle multiplication (as in the released monomer files)."""
    a = {}
    for side in ("left", "right"):
        for kind in ("projection", "gate"):
            a[f"{tri}/{side}_{kind}//weights"] = rng.normal(size=stack + (c, h)).astype(np.float32)
            a[f"{tri}/{side}_{kind}//bias"] = rng.normal(size=stack + (h,)).astype(np.float32)
    for norm, width in (("center_layer_norm", h), ("layer_norm_input", c)):
        a[f"{tri}/{norm}//scale"] = rng.normal(size=stack + (width,)).astype(np.float32)
        a[f"{tri}/{norm}//offset"] = rng.normal(size=stack + (width,)).astype(np.float32)
    a[f"{tri}/output_projection//weights"] = rng.normal(size=stack + (h, c)).astype(np.float32)
    a[f"{tri}/output_projection//bias"] = rng.normal(size=stack + (c,)).astype(np.float32)
    a[f"{tri}/gating_linear//weights"] = rng.normal(size=stack + (c, c)).astype(np.float32)
    a[f"{tri}/gating_linear//bias"] = rng.normal(size=stack + (c,)).astype(np.float32)
    return a


def _synthetic(seed=0):
    rng = np.random.default_rng(seed)
    arrays = {**_unfused(rng), **_unfused(rng, TRI_IN, stack=(2,), c=5, h=6)}
    arrays[OTHER] = rng.normal(size=(22, 7)).astype(np.float32)
    return arrays


def _write(path: Path, arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _flat_colabfold(arrays):
    from alphafold.model.utils import flat_params_to_haiku

    nested = flat_params_to_haiku(dict(arrays), fuse=True, to_jnp=False)
    return {f"{s}//{n}": v for s, d in nested.items() for n, v in d.items()}


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Keep the user cache dir of every test inside tmp_path."""
    d = tmp_path / "user-cache"
    monkeypatch.setenv("AF2CPU_CACHE", str(d))
    return d


# --- the fused layout -------------------------------------------------------------------------------


def test_fuse_equals_colabfold_flat_params_to_haiku():
    arrays = _synthetic()
    ours = converters.fuse_triangle_multiplication(arrays)
    want = _flat_colabfold(arrays)
    assert sorted(ours) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(ours[k], want[k], err_msg=k)
    assert f"{TRI}/projection//weights" in ours and f"{TRI}/center_norm//scale" in ours
    assert f"{TRI}/left_norm_input//offset" in ours
    assert ours[f"{TRI}/projection//weights"].shape == (2, 3, 8)
    assert not any("left_projection" in k or "center_layer_norm" in k for k in ours)


def test_already_fused_passes_through():
    fused = converters.fuse_triangle_multiplication(_synthetic())
    again = converters.fuse_triangle_multiplication(fused)
    assert sorted(again) == sorted(fused)
    for k in fused:
        np.testing.assert_array_equal(again[k], fused[k])
    assert not converters.is_unfused(fused) and converters.is_unfused(_synthetic())


def test_half_pair_is_named():
    arrays = _synthetic()
    del arrays[f"{TRI}/right_gate//weights"]
    with pytest.raises(ConversionError, match="right_gate//weights"):
        converters.fuse_triangle_multiplication(arrays)


def test_leftover_array_is_named():
    arrays = _synthetic()
    arrays[f"{TRI}/left_projection//extra"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match="left_projection//extra"):
        converters.fuse_triangle_multiplication(arrays)


def test_mixed_layouts_are_rejected():
    arrays = _synthetic()
    arrays[f"{TRI}/projection//bias"] = np.zeros((2, 8), np.float32)
    with pytest.raises(ConversionError, match="mixes the fused and unfused"):
        converters.fuse_triangle_multiplication(arrays)


def test_expected_shapes_name_missing_unexpected_and_misshaped(tmp_path):
    npz = _write(tmp_path / "params" / "params_model_3_ptm.npz", _synthetic())
    fused = converters.fuse_triangle_multiplication(_synthetic())
    expected = {k: v.shape for k, v in fused.items()}
    converters.convert_arrays(npz, expected)  # fits exactly

    bad = dict(expected)
    del bad[OTHER]
    bad["alphafold/alphafold_iteration/new_head//weights"] = (1,)
    bad[f"{TRI}/gate//bias"] = (2, 9)
    with pytest.raises(ParamsMismatch) as e:
        converters.convert_arrays(npz, bad)
    msg = str(e.value)
    assert "params_model_3_ptm.npz" in msg
    assert e.value.unexpected == [OTHER]
    assert e.value.missing == ["alphafold/alphafold_iteration/new_head//weights"]
    assert e.value.misshaped and f"{TRI}/gate//bias" in e.value.misshaped[0]
    # nothing was cached for a file that does not fit
    with pytest.raises(ParamsMismatch):
        converters.load_params(npz, expected=bad)
    assert not list(npz.parent.glob("*.safetensors"))


# --- files, cache and errors -----------------------------------------------------------------------


def test_load_params_converts_once_then_reuses(tmp_path, caplog):
    import torch
    from safetensors import safe_open

    arrays = _synthetic()
    npz = _write(tmp_path / "params" / "params_model_1_ptm.npz", arrays)
    log = logging.getLogger("test-converters")
    with caplog.at_level(logging.INFO, logger="test-converters"):
        first = converters.load_params(npz, log)
    assert "converted" in caplog.text and "reusing" not in caplog.text
    (out,) = npz.parent.glob("params_model_1_ptm.*.safetensors")
    sha = converters.file_sha256(npz)
    assert out.name == f"params_model_1_ptm.{sha[:16]}.safetensors"
    with safe_open(str(out), framework="np") as f:
        meta = f.metadata()
    assert meta["source_file"] == npz.name and meta["source_sha256"] == sha
    assert meta["converter_version"] == converters.CONVERTER_FORMAT_VERSION
    mtime = out.stat().st_mtime_ns

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test-converters"):
        second = converters.load_params(npz, log)
    assert "reusing cached safetensors" in caplog.text and "converted" not in caplog.text
    assert out.stat().st_mtime_ns == mtime
    want = _flat_colabfold(arrays)
    assert sorted(first) == sorted(second) == sorted(want)
    for k in want:
        assert isinstance(second[k], torch.Tensor)
        np.testing.assert_array_equal(second[k].numpy(), want[k])
    nested = converters.nested(second)
    assert nested[f"{TRI}/projection"]["weights"] is second[f"{TRI}/projection//weights"]
    assert set(nested[f"{TRI}/projection"]) == {"weights", "bias"}


def test_changed_source_is_converted_again(tmp_path):
    npz = _write(tmp_path / "params" / "params_model_1_ptm.npz", _synthetic(0))
    messages = []
    converters.load_params(npz, messages.append)
    _write(npz, _synthetic(1))
    os.utime(npz, ns=(1, 1))  # a different mtime, whatever the clock resolution
    again = converters.load_params(npz, messages.append)
    assert [m.split()[0] for m in messages] == ["converted", "converted"]
    np.testing.assert_array_equal(again[OTHER].numpy(), _synthetic(1)[OTHER])
    assert len(list(npz.parent.glob("*.safetensors"))) == 2


def test_unchanged_file_is_not_rehashed(tmp_path, monkeypatch):
    from af2cpu_plugin.converters import hashing

    npz = _write(tmp_path / "params" / "params_model_1_ptm.npz", _synthetic())
    sha = converters.file_sha256(npz)
    monkeypatch.setattr(hashing, "sha256_of", lambda p: pytest.fail("re-hashed an unchanged file"))
    assert converters.file_sha256(npz) == sha
    converters.load_params(npz, lambda m: None)


def test_read_only_params_dir_uses_user_cache(tmp_path, user_cache, monkeypatch):
    npz = _write(tmp_path / "params" / "params_model_2_ptm.npz", _synthetic())
    os.chmod(npz.parent, 0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the check see what a user would
            real = params_cache.is_writable_dir
            monkeypatch.setattr(params_cache, "is_writable_dir", lambda d: False if d == npz.parent else real(d))
        messages = []
        converters.load_params(npz, messages.append)
        converters.load_params(npz, messages.append)
    finally:
        os.chmod(npz.parent, 0o755)
    assert not list(npz.parent.glob("*.safetensors"))
    (out,) = user_cache.glob("params_model_2_ptm.*.safetensors")
    assert messages[0].startswith("converted") and str(out) in messages[0]
    assert messages[1].startswith("reusing cached safetensors") and str(out) in messages[1]


def test_missing_file_error_names_file_and_fix(tmp_path):
    npz = tmp_path / "params" / "params_model_1_ptm.npz"
    with pytest.raises(ConversionError) as e:
        converters.load_params(npz, lambda m: None)
    msg = str(e.value)
    assert str(npz) in msg and "not found" in msg and "download" in msg and "\n" not in msg


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04truncated"])
def test_corrupt_file_error(tmp_path, content):
    npz = tmp_path / "params" / "params_model_1_ptm.npz"
    npz.parent.mkdir()
    npz.write_bytes(content)
    with pytest.raises(ConversionError) as e:
        converters.load_params(npz, lambda m: None)
    assert str(npz) in str(e.value) and "download" in str(e.value)


def test_truncated_npz_error(tmp_path):
    npz = _write(tmp_path / "params" / "params_model_1_ptm.npz", _synthetic())
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="corrupt or truncated"):
        converters.load_params(npz, lambda m: None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file_error(tmp_path):
    npz = _write(tmp_path / "params" / "params_model_1_ptm.npz", _synthetic())
    os.chmod(npz, 0)
    try:
        with pytest.raises(ConversionError, match="permissions"):
            converters.load_params(npz, lambda m: None)
    finally:
        os.chmod(npz, 0o644)


def test_object_arrays_are_never_unpickled(tmp_path):
    npz = tmp_path / "params" / "params_model_1_ptm.npz"
    npz.parent.mkdir()
    np.savez(npz, **{OTHER: np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(ConversionError, match="pickled object array"):
        converters.load_params(npz, lambda m: None)


def test_convert_data_dir(tmp_path):
    params = tmp_path / "params"
    _write(params / "params_model_1_ptm.npz", _synthetic(0))
    _write(params / "params_model_3_ptm.npz", _synthetic(1))
    messages = []
    out = converters.convert_data_dir(tmp_path, messages.append)
    assert [p.name.split(".")[0] for p in out] == ["params_model_1_ptm", "params_model_3_ptm"]
    assert all(p.suffix == ".safetensors" and p.is_file() for p in out)
    assert converters.convert_data_dir(tmp_path, messages.append) == out
    assert [m.split()[0] for m in messages] == ["converted", "converted", "reusing", "reusing"]
    assert converters.convert_data_dir(tmp_path / "nothing-here", messages.append) == []


# --- full-size random weights (generated once, kept in the test disk cache) ------------------------


def _cached_npz(model_type, n):
    from af2cpu_plugin.random_params import params_file_name
    from af2cpu_plugin.testing.params_cache import cached_random_data_dir

    data_dir = cached_random_data_dir(model_type, (n,), seed=0)
    with np.load(data_dir / "params" / params_file_name(model_type, n), allow_pickle=False) as f:
        return data_dir, {k: f[k] for k in f.files}


def test_random_params_layout_matches_released_files():
    _, flat = _cached_npz("alphafold2_ptm", 3)  # make_random_params("alphafold2_ptm", 3, seed=0)
    assert len(flat) == 267
    assert 92.8e6 < sum(a.size for a in flat.values()) < 93.0e6
    assert all(a.dtype == np.float32 for a in flat.values())
    assert f"{TRI}/left_projection//weights" in flat and f"{TRI}/projection//weights" not in flat
    assert any(k.startswith("alphafold/alphafold_iteration/predicted_aligned_error_head/") for k in flat)
    assert not any("template" in k for k in flat)
    # constant arrays were perturbed: nothing is left all-equal
    assert not [k for k, a in flat.items() if a.size > 1 and np.all(a == a.flat[0])]


def test_random_params_fit_colabfold_fused_model():
    """ColabFold's own loader (use_fuse=True) gives exactly the arrays its model_1_ptm initialises."""
    import haiku as hk
    import jax
    from alphafold.model import modules
    from colabfold.alphafold.models import get_model_haiku_params

    from af2cpu_plugin import random_params as rp

    data_dir, _ = _cached_npz("alphafold2_ptm", 1)
    params = get_model_haiku_params(str(data_dir), "alphafold2_ptm", "1", use_fuse=True, to_jnp=False)
    cfg = rp.random_init_config("alphafold2_ptm", 1)
    evo = cfg.model.embeddings_and_evoformer
    for stack in (evo.evoformer, evo.template.template_pair_stack):
        stack.triangle_multiplication_incoming.fuse_projection_weights = True
        stack.triangle_multiplication_outgoing.fuse_projection_weights = True
    init = hk.transform(lambda b: modules.AlphaFold_noE(cfg.model)(b, is_training=False)).init
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), rp._dummy_batch(with_templates=True))
    want = {f"{s}//{n}": tuple(v.shape) for s, d in shapes.items() for n, v in d.items()}
    got = {f"{s}//{n}": tuple(v.shape) for s, d in params.items() for n, v in d.items()}
    assert got == want


def test_drawn_params_follow_haikus_init_table():
    """The fast "draw" method (what the demo and this test cache use): every array has the shape of haiku's
    init of that architecture, its scale (std within 3%), the right distribution, and no constant array."""
    from af2cpu_plugin import random_params as rp

    _, flat = _cached_npz("alphafold2_ptm", 3)
    table = rp._read_table(rp.architecture("alphafold2_ptm", 3))
    assert sorted(flat) == sorted(table)
    for key, (shape, kind, *stats) in table.items():
        a = flat[key]
        assert list(a.shape) == shape, key
        if kind != "const" and a.size > 1000:
            mean, std = stats
            assert abs(a.std() / std - 1) < 0.03, (key, a.std(), std)
            edge = np.abs(a - mean).max() / std
            assert edge <= (1.75 if kind == "uniform" else 2.3), (key, kind, edge)


def test_every_model_has_an_init_table():
    from af2cpu_plugin import random_params as rp

    names = {rp.architecture(t, n) for t in rp.MODEL_TYPES for n in (1, 2, 3, 4, 5)}
    assert names == {p.stem for p in rp.INIT_TABLES.glob("*.json")}
    assert {"alphafold2_ptm", "alphafold2_ptm-templates", "alphafold2_multimer_v3"} <= names
    with pytest.raises(ValueError, match="method"):
        rp.make_random_params("alphafold2_ptm", 3, method="guess")


@pytest.mark.heavy
@pytest.mark.parametrize("model_type", ["alphafold2_ptm", "alphafold2", "alphafold2_multimer_v1",
                                        "alphafold2_multimer_v2", "alphafold2_multimer_v3"])
def test_init_tables_match_haikus_shapes(model_type):
    """Each table holds exactly the arrays, with their shapes, that haiku's init of the model makes
    (traced, not run: jax.eval_shape)."""
    import jax

    from af2cpu_plugin import random_params as rp
    from af2cpu_plugin.engine.params import flatten

    for n in (1, 3):
        cfg = rp.random_init_config(model_type, n)
        init, batch = rp._jitted_init(model_type, cfg.model.to_json_best_effort(sort_keys=True))
        shapes = {k: list(v.shape) for k, v in flatten(jax.eval_shape(init, jax.random.PRNGKey(0), batch)).items()}
        table = rp._read_table(rp.architecture(model_type, n))
        assert {k: v[0] for k, v in table.items()} == shapes


@pytest.mark.parametrize("damage", ["flip", "zero_page"])
def test_damaged_cache_is_converted_again_never_used(tmp_path, monkeypatch, damage):
    """A converted cache whose data changed on disk (a flipped bit, a zeroed page) fails its checksum on
    load: it is converted again from the npz, with one log line, and the right arrays come back."""
    src_dir, _ = _cached_npz("alphafold2_ptm", 3)
    npz = tmp_path / "params" / "params_model_3_ptm.npz"
    npz.parent.mkdir()
    npz.symlink_to(src_dir / "params" / npz.name)
    monkeypatch.setenv("AF2CPU_CACHE", str(tmp_path / "user-cache"))
    messages = []
    # (cloned: the loaded tensors map the file, so damaging it in place changes them too)
    good = {k: v.clone() for k, v in converters.load_params(npz, messages.append).items()}
    (cached,) = npz.parent.glob("*.safetensors")
    size = cached.stat().st_size
    with open(cached, "r+b") as f:
        f.seek(size // 2)
        if damage == "flip":
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0x01]))
        else:
            f.write(bytes(4096))
    again = converters.load_params(npz, messages.append)
    assert any("is damaged" in m for m in messages), messages
    assert messages[-1].startswith("converted")
    assert sorted(again) == sorted(good) and all(torch.equal(again[k], good[k]) for k in good)


def test_concurrent_processes_convert_once(tmp_path, monkeypatch):
    """Two processes loading one npz at once: one converts (under a file lock), the other reuses its file."""
    import subprocess
    import sys

    src_dir, _ = _cached_npz("alphafold2_ptm", 3)
    npz = tmp_path / "params" / "params_model_3_ptm.npz"
    npz.parent.mkdir()
    npz.symlink_to(src_dir / "params" / npz.name)
    code = ("import sys; from af2cpu_plugin import converters; "
            "converters.load_params(sys.argv[1], lambda m: print(m.split()[0], flush=True))")
    env = {**os.environ, "AF2CPU_CACHE": str(tmp_path / "user-cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(npz)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    words = sorted(p.communicate(timeout=300)[0].split()[0] for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert words == ["converted", "reusing"], words
    assert len(list(npz.parent.glob("*.safetensors"))) == 1


def test_non_ptm_files_lack_the_pae_head():
    _, flat = _cached_npz("alphafold2", 1)
    assert len(flat) == 336 and 93.1e6 < sum(a.size for a in flat.values()) < 93.3e6
    assert not any("predicted_aligned_error" in k for k in flat)
    assert any("template_embedding" in k for k in flat)


def test_cached_random_files_convert_to_fused_layout(monkeypatch, caplog):
    from af2cpu_plugin.random_params import MONOMER_DOWNLOAD_MARKER
    from af2cpu_plugin.testing.params_cache import cached_random_data_dir

    data_dir = cached_random_data_dir("alphafold2_ptm", (1, 3), seed=0)
    assert (data_dir / "params" / MONOMER_DOWNLOAD_MARKER).is_file()
    npz1 = data_dir / "params" / "params_model_1_ptm.npz"
    with np.load(npz1, allow_pickle=False) as f:
        raw1 = {k: f[k] for k in f.files}
    assert len(raw1) == 338 and 93.1e6 < sum(a.size for a in raw1.values()) < 93.3e6
    assert sum("template_embedding" in k for k in raw1) > 0

    # the converted files are cached beside the npz of the (persistent) test cache
    monkeypatch.setenv("AF2CPU_CACHE", str(data_dir / "user-cache"))
    flat1 = converters.load_params(npz1, lambda m: None)
    want = _flat_colabfold(raw1)
    assert sorted(flat1) == sorted(want) and len(flat1) == 314
    for scope in ("evoformer_iteration", "extra_msa_stack",
                  "template_embedding/single_template_embedding/template_pair_stack/__layer_stack_no_state"):
        for tri in ("incoming", "outgoing"):
            k = f"alphafold/alphafold_iteration/evoformer/{scope}/triangle_multiplication_{tri}"
            assert f"{k}/projection//weights" in flat1 and f"{k}/left_projection//weights" not in flat1
            np.testing.assert_array_equal(flat1[f"{k}/gate//weights"].numpy(), want[f"{k}/gate//weights"])
    flat3 = converters.load_params(data_dir / "params" / "params_model_3_ptm.npz", lambda m: None)
    assert len(flat3) == 251  # 267 arrays, 4 triangle multiplications fused (-4 arrays each)
    assert 92.8e6 < sum(t.numel() for t in flat3.values()) < 93.0e6


def test_params_for_another_model_are_refused_naming_the_file_and_never_cached(tmp_path, monkeypatch):
    """model 3's file (no template arrays) given as model 1's: the cpu backend's params hook checks it against
    model 1's recorded shapes before converting, names the file, and caches nothing."""
    from af2cpu_plugin.hooks import cpu_backend

    src_dir, _ = _cached_npz("alphafold2_ptm", 3)
    npz = tmp_path / "params" / "params_model_1_ptm.npz"
    npz.parent.mkdir()
    npz.symlink_to(src_dir / "params" / "params_model_3_ptm.npz")
    monkeypatch.setenv("AF2CPU_CACHE", str(tmp_path / "user-cache"))
    with pytest.raises(ParamsMismatch) as e:
        cpu_backend.af2cpu_prepare_params("cpu", str(tmp_path), "alphafold2_ptm", 1, True, None)
    assert str(e.value).startswith(f"{npz}: params do not fit the model") and "missing" in str(e.value)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_recorded_shapes_fit_every_random_file_after_conversion():
    """The shapes the params hook checks against are the converted (fused) layout of each model type."""
    from af2cpu_plugin.random_params import expected_shapes, params_file_name

    for model_type, n in (("alphafold2_ptm", 1), ("alphafold2_ptm", 3), ("alphafold2_multimer_v3", 1)):
        data_dir, _ = _cached_npz(model_type, n)
        loaded = converters.load_params(data_dir / "params" / params_file_name(model_type, n), lambda m: None)
        assert {k: tuple(v.shape) for k, v in loaded.items()} == expected_shapes(model_type, n)
