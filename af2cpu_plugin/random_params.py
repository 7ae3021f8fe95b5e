"""Random AlphaFold2 weights in the exact format of the real ones.

Real weights cannot be downloaded everywhere (CI, air-gapped clusters), so the
demo and the tests make random ones, in one of two ways:

* ``"haiku"``: haiku's own initialisers on ColabFold's real config with
  ``zero_init=False`` (with AF2's zero init the trunk is the identity and
  every atom sits at the origin). Tracing and compiling the model's init takes
  about 90 s a file on 2 cores. The benchmarks use these (``bench/parity.py``'s
  numbers in the README reproduce from them).
* ``"draw"`` (the default): each array drawn with numpy from the shape,
  distribution and scale that haiku's init gives it, read from a small table
  per architecture (``random_init/*.json``, made once from a haiku init by
  ``scripts/make_init_tables.py``). Seconds for five files. The demo and the
  test suite use these.

Either way, small noise then goes on the arrays that init leaves constant.
The noise on biases and offsets stays tiny: larger position-shared terms swamp
the pair track and PAE/pLDDT collapse to one value.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from af2cpu_plugin.engine.params import flatten

GATING_WEIGHT_STD = 0.02
SCALE_JITTER = 0.1
BIAS_STD = 0.005


def _is_bias_like(name: str) -> bool:
    return name in ("offset", "gating_b") or name.endswith("bias") or name.endswith("_b")


def perturb_constant_arrays(flat: Mapping[str, np.ndarray], seed: int = 0) -> Dict[str, np.ndarray]:
    """Add noise to every array that haiku init left constant.

    ``flat`` maps ``scope//name`` to arrays. LayerNorm scales are multiplied
    by 1±0.1, biases/offsets get N(0, 0.005), constant weights (gating) get
    N(0, 0.02). Arrays with any variation are returned unchanged.
    """
    rng = np.random.default_rng(seed)
    out: Dict[str, np.ndarray] = {}
    for key in sorted(flat):
        a = np.asarray(flat[key], dtype=np.float32)
        name = key.split("//")[-1]
        if a.size > 0 and np.all(a == a.flat[0]):
            if name == "scale":
                a = a * rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER, a.shape).astype(np.float32)
            elif _is_bias_like(name):
                a = a + rng.normal(0.0, BIAS_STD, a.shape).astype(np.float32)
            else:
                a = a + rng.normal(0.0, GATING_WEIGHT_STD, a.shape).astype(np.float32)
        out[key] = a
    return out


# ---------------------------------------------------------------------------
# Whole models in the exact npz format of the released AlphaFold2 weights.
# ---------------------------------------------------------------------------

#: Bumped whenever the arrays that make_random_params produces change, so the
#: test cache (af2cpu_plugin.testing.params_cache) regenerates its files.
RANDOM_PARAMS_FORMAT_VERSION = 2
METHODS = ("draw", "haiku")

MONOMER_MODEL_TYPES = ("alphafold2_ptm", "alphafold2")
MULTIMER_MODEL_TYPES = ("alphafold2_multimer_v1", "alphafold2_multimer_v2", "alphafold2_multimer_v3")
MODEL_TYPES = MONOMER_MODEL_TYPES + MULTIMER_MODEL_TYPES  # order fixes each type's seed stream: append only
MONOMER_DOWNLOAD_MARKER = "download_finished.txt"  # colabfold.download.download_alphafold_params


def download_marker(model_type: str) -> str:
    """The file whose presence makes ``colabfold.download.download_alphafold_params`` skip the download."""
    if model_type in MULTIMER_MODEL_TYPES:
        return f"download_complexes_multimer_{model_type.rsplit('_', 1)[1]}_finished.txt"
    return MONOMER_DOWNLOAD_MARKER

# Tiny problem used to trace the model during haiku init (shapes of params do
# not depend on it).
_INIT_NUM_RES = 8
_INIT_NUM_MSA = 4
_INIT_NUM_EXTRA = 4
_INIT_NUM_TEMPLATES = 1
_INIT_NUM_MULTIMER_MSA = 520  # more rows than any multimer config samples (508), so the extra MSA is not empty


def params_file_name(model_type: str, model_number: int) -> str:
    """The file ColabFold reads for the model (colabfold.alphafold.models)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"random params support model types {', '.join(MODEL_TYPES)}, not {model_type!r}")
    from af2cpu_plugin.hooks.colabfold_seam import params_file_name as colabfold_file_name

    return colabfold_file_name(model_type, model_number)


def config_name(model_type: str, model_number: int) -> str:
    """alphafold.model.config name: model_N_ptm, model_N, model_N_multimer, model_N_multimer_v2 or _v3."""
    if model_number not in (1, 2, 3, 4, 5):
        raise ValueError(f"model_number must be 1..5, not {model_number!r}")
    params_file_name(model_type, model_number)  # validates model_type
    if model_type in MULTIMER_MODEL_TYPES:
        version = model_type.rsplit("_", 1)[1]
        return f"model_{model_number}_multimer" + ("" if version == "v1" else f"_{version}")
    return f"model_{model_number}_ptm" if model_type == "alphafold2_ptm" else f"model_{model_number}"


def random_init_config(model_type: str, model_number: int):
    """ColabFold's config for the model, fp32, non-zero init, the released files' triangle multiplication
    layout: unfused, except multimer v3 (stored fused)."""
    from alphafold.model import config

    cfg = config.model_config(config_name(model_type, model_number))
    gc = cfg.model.global_config
    gc.zero_init = False
    gc.bfloat16 = False
    gc.eval_dropout = False
    # RunModel sets these two (extended_ptm_config); AlphaFold_noE reads them.
    cfg.model.calc_extended_ptm = False
    cfg.model.use_probs_extended = False
    evo = cfg.model.embeddings_and_evoformer
    if model_type in MULTIMER_MODEL_TYPES:
        # The MSA budgets only size activations, never params: one value per type lets all five
        # models share one traced init (v3 models 4 and 5 differ from 1-3 only here).
        evo.num_msa, evo.num_extra_msa = 508, 2048
    fused = model_type == "alphafold2_multimer_v3"
    for stack in (evo.evoformer, evo.template.template_pair_stack):
        stack.triangle_multiplication_incoming.fuse_projection_weights = fused
        stack.triangle_multiplication_outgoing.fuse_projection_weights = fused
    return cfg


def _dummy_multimer_batch() -> Dict[str, np.ndarray]:
    """Minimal raw features (two chains) that ``modules_multimer.AlphaFold`` can trace."""
    n, t = _INIT_NUM_RES, _INIT_NUM_TEMPLATES
    s = _INIT_NUM_MULTIMER_MSA
    rng = np.random.default_rng(0)
    aatype = rng.integers(0, 20, n).astype(np.int32)
    chain = (np.arange(n) >= n // 2).astype(np.int32) + 1
    return {
        "aatype": aatype,
        "residue_index": np.arange(n, dtype=np.int32),
        "asym_id": chain, "entity_id": chain, "sym_id": np.ones(n, np.int32),
        "seq_mask": np.ones(n, np.float32),
        "msa": rng.integers(0, 21, (s, n)).astype(np.int32),
        "deletion_matrix": np.zeros((s, n), np.float32),
        "msa_mask": np.ones((s, n), np.float32),
        "cluster_bias_mask": np.eye(1, s, dtype=np.float32)[0],
        "bert_mask": np.zeros((s, n), np.float32),
        "template_aatype": np.tile(aatype, (t, 1)),
        "template_all_atom_positions": rng.normal(0, 5, (t, n, 37, 3)).astype(np.float32),
        "template_all_atom_mask": np.ones((t, n, 37), np.float32),
        "all_atom_positions": np.zeros((n, 37, 3), np.float32),
        "prev": {"prev_msa_first_row": np.zeros((n, 256), np.float32),
                 "prev_pair": np.zeros((n, n, 128), np.float32),
                 "prev_pos": np.zeros((n, 37, 3), np.float32)},
    }


def _dummy_batch(with_templates: bool) -> Dict[str, np.ndarray]:
    """A minimal single-ensemble feature dict that AlphaFold_noE can trace."""
    from alphafold.common import residue_constants as rc

    n, s, e, t = _INIT_NUM_RES, _INIT_NUM_MSA, _INIT_NUM_EXTRA, _INIT_NUM_TEMPLATES
    rng = np.random.default_rng(0)
    aatype = rng.integers(0, 20, n).astype(np.int32)
    atom14_exists = rc.restype_atom14_mask[aatype].astype(np.float32)
    atom37_exists = rc.restype_atom37_mask[aatype].astype(np.float32)
    to37 = np.array([[rc.atom_order[a] if a else 0 for a in rc.restype_name_to_atom14_names[rc.restype_1to3[r]]]
                     for r in rc.restypes] + [[0] * 14], np.int32)
    to14 = np.zeros((21, 37), np.int32)
    for r_idx, r in enumerate(rc.restypes):
        for i, a in enumerate(rc.restype_name_to_atom14_names[rc.restype_1to3[r]]):
            if a:
                to14[r_idx, rc.atom_order[a]] = i
    batch: Dict[str, np.ndarray] = {
        "aatype": aatype,
        "residue_index": np.arange(n, dtype=np.int32),
        "seq_length": np.array(n, np.int32),
        "seq_mask": np.ones(n, np.float32),
        "target_feat": np.eye(22, dtype=np.float32)[aatype + 1],
        "msa_feat": rng.random((s, n, 49)).astype(np.float32),
        "msa_mask": np.ones((s, n), np.float32),
        "extra_msa": rng.integers(0, 21, (e, n)).astype(np.int32),
        "extra_msa_mask": np.ones((e, n), np.float32),
        "extra_has_deletion": np.zeros((e, n), np.float32),
        "extra_deletion_value": np.zeros((e, n), np.float32),
        "atom14_atom_exists": atom14_exists,
        "atom37_atom_exists": atom37_exists,
        "residx_atom14_to_atom37": to37[aatype],
        "residx_atom37_to_atom14": to14[aatype],
    }
    if with_templates:
        batch.update({
            "template_aatype": np.tile(aatype, (t, 1)),
            "template_mask": np.ones(t, np.float32),
            "template_all_atom_positions": rng.normal(0, 5, (t, n, 37, 3)).astype(np.float32),
            "template_all_atom_masks": np.tile(atom37_exists, (t, 1, 1)),
            "template_pseudo_beta": rng.normal(0, 5, (t, n, 3)).astype(np.float32),
            "template_pseudo_beta_mask": np.ones((t, n), np.float32),
        })
    return batch


def model_seed(model_type: str, model_number: int, seed: int) -> int:
    """Independent seeds per (model type, model number, seed), so all ten files differ."""
    ss = np.random.SeedSequence([int(seed), int(model_number), MODEL_TYPES.index(model_type)])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def make_random_params(model_type: str, model_number: int, seed: int = 0, method: str = "draw") -> Dict[str, np.ndarray]:
    """Random weights for ``params_model_N*.npz``: flat ``scope//name`` -> float32 array, by ``method``
    (``"draw"``: :func:`draw_random_params`; ``"haiku"``: :func:`haiku_random_params`)."""
    if method == "draw":
        return draw_random_params(model_type, model_number, seed)
    if method == "haiku":
        return haiku_random_params(model_type, model_number, seed)
    raise ValueError(f"unknown random params method {method!r}; use one of {', '.join(METHODS)}")


# ---------------------------------------------------------------------------
# "draw": numpy, from a table of haiku's init per architecture
# ---------------------------------------------------------------------------

INIT_TABLES = Path(__file__).with_name("random_init")
#: haiku's TruncatedNormal cuts at 2 standard deviations of the untruncated normal, whose std is then
#: this factor of it (haiku divides the stddev by it so the truncated one has the wanted std).
_TRUNCATED_STD = 0.87962566103423978


def architecture(model_type: str, model_number: int) -> str:
    """Which table a model draws from: its parameter shapes and init depend on the model type and on
    whether the model embeds templates (monomer models 1-2 do, 3-5 do not; every multimer model does)."""
    cfg = random_init_config(model_type, model_number)
    templates = model_type in MULTIMER_MODEL_TYPES or bool(cfg.model.embeddings_and_evoformer.template.enabled)
    return model_type + ("-templates" if templates and model_type in MONOMER_MODEL_TYPES else "")


def init_table(flat: Mapping[str, np.ndarray]) -> Dict[str, list]:
    """What haiku's init gave each array (before the noise on constant ones): ``[shape, "const", value]``,
    or ``[shape, kind, mean, std]`` with kind ``"uniform"`` (glorot's) or ``"normal"`` (a truncated normal)."""
    table: Dict[str, list] = {}
    for key in sorted(flat):
        a = np.asarray(flat[key], np.float64)
        shape = list(a.shape)
        if a.size == 0 or np.all(a == a.flat[0]):
            table[key] = [shape, "const", float(a.flat[0]) if a.size else 0.0]
            continue
        mean, std = float(a.mean()), float(a.std())
        # A uniform's extremes sit at sqrt(3) = 1.73 std; a normal truncated at 2 sigma's at 2.27 std.
        kind = "uniform" if np.abs(a - mean).max() < 2.0 * std else "normal"
        table[key] = [shape, kind, float(f"{mean:.6g}"), float(f"{std:.6g}")]
    return table


def _read_table(name: str) -> Dict[str, list]:
    path = INIT_TABLES / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no init table for {name} in {INIT_TABLES}: use method 'haiku'") from None


def expected_shapes(model_type: str, model_number: int) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Every array ColabFold's model of this type and number has, with its shape (haiku keys, the fused
    layout the converter writes), read from the recorded init tables; ``None`` for a model type without
    one. The converter checks a params file against it, so a file for another model type is refused
    naming the file, before it is converted or cached."""
    if model_type not in MODEL_TYPES:
        return None
    from af2cpu_plugin.converters.fuse import fused_shapes  # the tables hold each release's own layout

    return fused_shapes({k: v[0] for k, v in _read_table(architecture(model_type, int(model_number))).items()})


def draw_random_params(model_type: str, model_number: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random weights drawn with numpy from haiku's init of the model's architecture (its shapes,
    distributions and scales: :func:`init_table`), then :func:`perturb_constant_arrays`. The same
    properties the tests rely on (pLDDT and PAE vary across residues), in a fraction of a second per
    array instead of a traced init."""
    table = _read_table(architecture(model_type, model_number))
    s = model_seed(model_type, model_number, seed)
    rng = np.random.default_rng(s)
    flat: Dict[str, np.ndarray] = {}
    for key in sorted(table):
        shape, kind, *stats = table[key]
        if kind == "const":
            flat[key] = np.full(shape, stats[0], np.float32)
        elif kind == "uniform":
            mean, std = stats
            half = std * np.sqrt(3.0)
            flat[key] = rng.uniform(mean - half, mean + half, shape).astype(np.float32)
        else:
            mean, std = stats
            flat[key] = (_truncated_normal(rng, shape) * (std / _TRUNCATED_STD) + mean).astype(np.float32)
    return perturb_constant_arrays(flat, seed=s)


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normals cut at ±2 (redrawn outside), as haiku's TruncatedNormal."""
    x = rng.standard_normal(shape, dtype=np.float32)
    out = np.abs(x) > 2.0
    while out.any():
        x[out] = rng.standard_normal(int(out.sum()), dtype=np.float32)
        out = np.abs(x) > 2.0
    return x


# ---------------------------------------------------------------------------
# "haiku": the model's own init, traced and compiled
# ---------------------------------------------------------------------------


def haiku_random_params(model_type: str, model_number: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random weights for ``params_model_N*.npz`` from haiku's init: flat ``scope//name`` -> float32 array.

    haiku init of ColabFold's model (``modules.AlphaFold_noE``, what RunModel
    builds for ``num_ensemble=1``, or ``modules_multimer.AlphaFold``) with the
    real config, fp32, ``zero_init=False`` and the triangle multiplication
    layout of the released files (unfused but for multimer v3); then
    :func:`perturb_constant_arrays`. Monomer models 1 and 2 carry the template
    embedding arrays, all multimer models do; the non-pTM ``alphafold2``
    models lack the predicted_aligned_error head.
    """
    s = model_seed(model_type, model_number, seed)
    return perturb_constant_arrays(haiku_init(model_type, model_number, s), seed=s)


def haiku_init(model_type: str, model_number: int, key_seed: int) -> Dict[str, np.ndarray]:
    """haiku's init of the model (:func:`random_init_config`) with PRNG key ``key_seed``, as it comes."""
    import jax

    cfg = random_init_config(model_type, model_number)
    init, batch = _jitted_init(model_type, cfg.model.to_json_best_effort(sort_keys=True))
    params = init(jax.random.PRNGKey(key_seed), batch)
    return {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}


@functools.lru_cache(maxsize=4)
def _jitted_init(model_type: str, model_config_json: str):
    """haiku's init of the model, jitted once per distinct config (tracing the full model is most of
    the cost: models whose configs are equal, e.g. multimer v3 models 1-3, share one compile)."""
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import haiku as hk
    import jax
    import ml_collections
    from alphafold.model import modules, modules_multimer

    model_cfg = ml_collections.ConfigDict(json.loads(model_config_json))
    if model_type in MULTIMER_MODEL_TYPES:
        batch = _dummy_multimer_batch()

        def forward(b):
            return modules_multimer.AlphaFold(model_cfg)(dict(b), is_training=False)
    else:
        batch = _dummy_batch(model_cfg.embeddings_and_evoformer.template.enabled)

        def forward(b):
            return modules.AlphaFold_noE(model_cfg)(b, is_training=False)

    return jax.jit(hk.transform(forward).init), batch


def save_npz_atomically(path, arrays: Mapping[str, np.ndarray]) -> None:
    from .atomic import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **arrays)

    atomic_write(path, write)


def write_random_params(data_dir, model_type: str = "alphafold2_ptm", models=(1, 2, 3, 4, 5), seed: int = 0,
                        method: str = "draw"):
    """Write ColabFold's ``<data_dir>/params/params_model_N*.npz`` for ``models`` plus its marker,
    made by ``method`` (:func:`make_random_params`).

    Files that already exist are kept. The marker (``download_finished.txt``
    or ``download_complexes_multimer_vN_finished.txt``, as in
    ``colabfold.download.download_alphafold_params``) makes ColabFold skip the
    download. Returns the list of npz paths.
    """

    params_dir = Path(data_dir) / "params"
    params_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in models:
        path = params_dir / params_file_name(model_type, int(n))
        if not path.exists():
            save_npz_atomically(str(path), make_random_params(model_type, int(n), seed, method))
        paths.append(path)
    marker = params_dir / download_marker(model_type)
    if not marker.exists():
        marker.write_text("")
    return paths
