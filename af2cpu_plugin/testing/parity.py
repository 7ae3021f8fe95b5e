"""End-to-end comparison of ColabFold's JAX runner with the cpu runner.

Shared by the test suite (reduced depth) and ``bench/parity.py`` (full
depth): ColabFold's config edits, ColabFold's feature pipeline on an a3m or a
single sequence, random params in the AF2 format, and both runners on the
same processed features.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from ..engine.params import nested


def colabfold_config(model_name: str = "model_3_ptm", num_recycle: int = 1, *, evoformer_blocks: Optional[int] = None,
                     extra_blocks: Optional[int] = None, structure_layers: Optional[int] = None,
                     max_seq: Optional[int] = None, max_extra_seq: Optional[int] = None,
                     msa_depth: Optional[int] = None,
                     save_all: bool = False, rank_by: Optional[str] = None, stop_at_score: float = 100.0,
                     recycle_early_stop_tolerance: Optional[float] = None, template_blocks: Optional[int] = None,
                     use_cluster_profile: bool = True):
    """A model config edited as ``colabfold.alphafold.models.load_models_and_params`` does,
    with fp32 (``use_bfloat16=False``) and fused triangle multiplications; depth optionally reduced.

    ``msa_depth`` (sequences in the MSA, query included) lowers the MSA budgets
    as ``colabfold.batch.run`` does for a single query. Multimer configs
    (``model_N_multimer[_v2|_v3]``) take the budgets in the model
    (``num_msa``, ``num_extra_msa``), rank by ``80 ipTM + 20 pTM`` and keep
    ``num_recycle`` as given (ColabFold passes ``--num-recycle`` through)."""
    from alphafold.model import config

    cfg = config.model_config(model_name)
    m = cfg.model
    multimer = bool(m.global_config.multimer_mode)
    m.stop_at_score = float(stop_at_score)
    m.rank_by = rank_by or ("multimer" if multimer else "plddt")
    m.global_config.eval_dropout = False
    m.global_config.bfloat16 = False
    evo = m.embeddings_and_evoformer
    for k in ("triangle_multiplication_incoming", "triangle_multiplication_outgoing"):
        evo.evoformer[k].fuse_projection_weights = True
        evo.template.template_pair_stack[k].fuse_projection_weights = True
    if msa_depth is not None:
        max_seq = min(msa_depth, max_seq or 512)
        max_extra_seq = max(min(msa_depth - max_seq, max_extra_seq or 5120), 1)
    if max_seq is not None:
        if multimer:
            evo.num_msa = max_seq
        else:
            cfg.data.eval.max_msa_clusters = max_seq
    if max_extra_seq is not None:
        if multimer:
            evo.num_extra_msa = max_extra_seq
        else:
            cfg.data.common.max_extra_msa = max_extra_seq
    if not save_all:
        m.heads.distogram.weight = 0.0
        m.heads.masked_msa.weight = 0.0
        m.heads.experimentally_resolved.weight = 0.0
    m.num_recycle = num_recycle
    if multimer:
        evo.use_cluster_profile = use_cluster_profile
        m.num_ensemble_eval = 1
    else:
        cfg.data.common.num_recycle = num_recycle
        cfg.data.eval.num_ensemble = 1
    if recycle_early_stop_tolerance is not None:
        m.recycle_early_stop_tolerance = recycle_early_stop_tolerance
    if evoformer_blocks is not None:
        evo.evoformer_num_block = evoformer_blocks
    if extra_blocks is not None:
        evo.extra_msa_stack_num_block = extra_blocks
    if structure_layers is not None:
        m.heads.structure_module.num_layer = structure_layers
    if template_blocks is not None:
        evo.template.template_pair_stack.num_block = template_blocks
    return cfg


def is_multimer(cfg) -> bool:
    return bool(cfg.model.global_config.multimer_mode)


def multimer_features(chains, model_type: str = "alphafold2_multimer_v3", max_seq: int = 508,
                      msa_pad_depth: int = 0) -> Dict[str, np.ndarray]:
    """ColabFold's raw multimer features for a complex, as ``colabfold.batch`` makes and edits them.

    ``chains``: one ``(sequence, copies, unpaired_a3m_or_None)`` per unique
    chain (no paired MSA: each chain's paired block is its query alone).
    ``generate_input_feature`` builds the features (MSA padded to
    ``max_seq + 4`` rows), then ``predict_structure``'s edits: ``asym_id``
    offset to start at 0 and, with ``msa_pad_depth``, the MSA padded deeper.
    """
    from colabfold.batch import generate_input_feature, mk_mock_template
    from alphafold.data import pipeline_multimer

    seqs = [c[0] for c in chains]
    card = [int(c[1]) for c in chains]
    unpaired = [c[2] if c[2] else f">{101 + i}\n{c[0]}" for i, c in enumerate(chains)]
    templates = [mk_mock_template(sq) for sq in seqs]
    feat, _ = generate_input_feature(seqs, card, unpaired, None, templates, True, model_type, max_seq=max_seq)
    feat["asym_id"] = feat["asym_id"] - feat["asym_id"][..., 0]
    if msa_pad_depth > feat["msa"].shape[0]:
        feat = pipeline_multimer.pad_msa(feat, min_num_seq=msa_pad_depth)
    return feat


def with_bfloat16(cfg):
    """A copy of ``cfg`` with ColabFold's default bf16 trunk (``use_bfloat16=True``) for the JAX model."""
    out = copy.deepcopy(cfg)
    out.model.global_config.bfloat16 = True
    return out


def msa_depth(a3m_text: str) -> int:
    """Sequences in an a3m (query included); 1 for a bare sequence."""
    return max(1, sum(1 for line in a3m_text.splitlines() if line.startswith(">")))


def processed_features(cfg, a3m_text: str, random_seed: int = 0, model_type: str = "alphafold2_ptm",
                       templates: Optional[list] = None) -> Dict[str, np.ndarray]:
    """ColabFold's own path from an a3m, a bare sequence, or chains joined by ``:``
    (a complex folded with a monomer model) to the runner's features.

    ``templates`` (one template feature dict per unique chain, e.g. from
    :func:`custom_template_features`) replaces ColabFold's mock templates."""
    from alphafold.model import features
    from colabfold.batch import generate_input_feature, unserialize_msa

    template_override = templates
    if a3m_text.lstrip().startswith(">"):
        query = a3m_text.splitlines()[1].strip()
        unpaired, paired, seqs, card, templates = unserialize_msa([a3m_text], query)
    else:
        seqs = a3m_text.strip().split(":")
        card = [1] * len(seqs)
        unpaired = [f">{101 + i}\n{s}" for i, s in enumerate(seqs)]
        paired = None
        from colabfold.batch import mk_mock_template
        templates = [mk_mock_template(s) for s in seqs]
    if template_override is not None:
        templates = template_override
    feature_dict, _ = generate_input_feature(seqs, card, unpaired, paired, templates, len(seqs) > 1, model_type,
                                             max_seq=cfg.data.eval.max_msa_clusters)
    feat = features.np_example_to_features(np_example=feature_dict, config=cfg, random_seed=random_seed)
    r = feat["aatype"].shape[0]
    feat["asym_id"] = np.tile(feature_dict["asym_id"], r).reshape(r, -1)  # as colabfold.batch.predict_structure
    return feat


def custom_template_features(query_sequence: str, template_dir, work_dir) -> list:
    """Template features as ColabFold builds them for ``--templates --custom-template-path DIR``
    with ``--msa-mode single_sequence`` (offline: hhsearch and kalign from colabfold-binaries).

    ``template_dir`` holds mmCIF files named like PDB entries (``1abc.cif``: the
    featuriser parses the hit name as ``PDBID_chain``); ColabFold writes its
    pdb70 index there (and may patch the files), so pass a scratch copy.
    Returns the list of template feature dicts (one per unique sequence) for
    :func:`processed_features`.
    """
    from colabfold.batch import get_msa_and_templates, mk_hhsearch_db

    mk_hhsearch_db(str(template_dir))
    *_, templates = get_msa_and_templates("job", query_sequence, None, Path(work_dir), "single_sequence",
                                          True, str(template_dir), "unpaired_paired")
    return templates


def _architecture_of(cfg) -> Tuple[str, int]:
    """The released model type and number whose array shapes ``cfg`` has (at full depth): multimer
    models share theirs (v3's fused layout is what this module hands out for every model); monomer
    models differ only by the template embedding (models 1-2) and the pTM head."""
    if is_multimer(cfg):
        return "alphafold2_multimer_v3", 1
    ptm = float(cfg.model.heads.predicted_aligned_error.weight) > 0
    templates = bool(cfg.model.embeddings_and_evoformer.template.enabled)
    return ("alphafold2_ptm" if ptm else "alphafold2"), (1 if templates else 3)


def _stack_depths(cfg) -> Dict[str, int]:
    """Scope fragment of each haiku layer stack -> the number of layers ``cfg`` asks for."""
    evo = cfg.model.embeddings_and_evoformer
    template_blocks = int(evo.template.template_pair_stack.num_block)
    return {
        "/evoformer_iteration/": int(evo.evoformer_num_block),
        "/extra_msa_stack/": int(evo.extra_msa_stack_num_block),
        "/template_pair_stack/__layer_stack_no_state/": template_blocks,  # monomer
        "/template_embedding_iteration/": template_blocks,  # multimer
    }


def random_params_for_config(cfg, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random weights for ``cfg`` (any depth): flat ``scope//name`` arrays in the fused
    triangle-multiplication layout (the config's ``fuse_projection_weights``).

    Drawn from haiku's recorded init of the full model (:func:`random_params.draw_random_params`:
    its shapes, distributions and scales, in well under a second), fused as ColabFold fuses them,
    and each layer stack cut to the config's depth. A reduced-depth config used to be initialised
    by tracing haiku's init, which took one to two minutes per config on a cold test cache.
    """
    from ..converters.fuse import fuse_triangle_multiplication
    from ..random_params import draw_random_params

    model_type, model_number = _architecture_of(cfg)
    flat = fuse_triangle_multiplication(draw_random_params(model_type, model_number, seed))
    depths = _stack_depths(cfg)
    out: Dict[str, np.ndarray] = {}
    for key, array in flat.items():
        scope = key.split("//")[0] + "/"
        depth = next((n for fragment, n in depths.items() if fragment in scope), None)
        out[key] = array if depth is None else np.ascontiguousarray(array[:depth])
    return out


def run_jax(cfg, flat: Dict[str, np.ndarray], feat, seed: int = 0) -> Tuple[Dict[str, Any], int]:
    import jax.numpy as jnp
    from alphafold.model import model as af_model

    params = {s: {n: jnp.asarray(v) for n, v in d.items()} for s, d in nested(flat).items()}
    runner = af_model.RunModel(copy.deepcopy(cfg), params)
    return runner.predict(feat, random_seed=seed)


def run_cpu(cfg, flat: Dict[str, np.ndarray], feat, seed: int = 0, policy=None) -> Tuple[Dict[str, Any], int]:
    from ..runner import CpuRunModel

    runner = CpuRunModel(copy.deepcopy(cfg), nested(flat), policy=policy)
    return runner.predict(feat, random_seed=seed)


def perturbed_by_one_ulp(feat: Dict[str, np.ndarray], key: str, direction: float,
                         seed: Optional[int] = None) -> Dict[str, np.ndarray]:
    """``feat`` with ``feat[key]`` moved one float32 ulp towards ``direction`` (±inf): the noise-floor input.

    With ``seed``, each element instead moves one ulp up, one ulp down or not at all, drawn independently:
    another change of the same size, so a floor can be sampled more than the three fixed nudges allow."""
    out = dict(feat)
    x = np.asarray(feat[key], np.float32)
    if seed is None:
        out[key] = np.nextafter(x, np.float32(direction)).astype(np.float32)
        return out
    step = np.random.default_rng(seed).integers(-1, 2, size=x.shape)
    up, down = np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))
    out[key] = np.where(step > 0, up, np.where(step < 0, down, x)).astype(np.float32)
    return out


def compare(a: Dict[str, Any], b: Dict[str, Any], interface: bool = False) -> Dict[str, Tuple[float, float]]:
    """max and mean |Δ| for coordinates (Å, atoms present), pLDDT, PAE, pTM and, with ``interface``
    (complexes), ipTM."""
    mask = np.asarray(a["structure_module"]["final_atom_mask"], bool)
    pos_a = np.asarray(a["structure_module"]["final_atom_positions"], np.float64)[mask]
    pos_b = np.asarray(b["structure_module"]["final_atom_positions"], np.float64)[mask]
    rows = {"coordinates (Å)": (pos_a, pos_b), "pLDDT": (a["plddt"], b["plddt"])}
    if "predicted_aligned_error" in a:
        rows["PAE"] = (a["predicted_aligned_error"], b["predicted_aligned_error"])
        rows["pTM"] = (a["ptm"], b["ptm"])
    if interface:
        rows["ipTM"] = (a["iptm"], b["iptm"])
    out = {}
    for name, (x, y) in rows.items():
        d = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
        out[name] = (float(d.max()), float(d.mean()))
    return out


def run_both_fp32(cfg, flat: Dict[str, np.ndarray], feat, seed: int = 0, policy=None,
                  passes: Optional[int] = None, jax_flat: Optional[Dict[str, np.ndarray]] = None,
                  cpu: bool = True, history: Optional[list] = None
                  ) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Both runners' recycle loops, each feeding back its own float16 ``prev`` as
    ColabFold does, returning the final pass's outputs *before* the float16
    cast (float16 alone is 0.03-0.06 Å at 32-128 Å, coarser than the parity bar).

    ``jax_flat`` gives JAX its own copy of the params (e.g. loaded by
    ColabFold's ``get_model_haiku_params``); ``cpu=False`` runs JAX only;
    ``history`` (a list) collects every pass's ``(jax, cpu)`` outputs."""
    import jax
    import jax.numpy as jnp
    from alphafold.model import model as af_model

    from ..runner import CpuRunModel, _to_float16, zero_prev

    jax_runner = af_model.RunModel(copy.deepcopy(cfg), {s: {n: jnp.asarray(v) for n, v in d.items()}
                                                        for s, d in nested(jax_flat or flat).items()})
    cpu_runner = CpuRunModel(copy.deepcopy(cfg), nested(flat), policy=policy) if cpu else None
    multimer = is_multimer(cfg)
    L = feat["aatype"].shape[0 if multimer else 1]
    jax_prev, cpu_prev = zero_prev(L), zero_prev(L)
    if multimer and "all_atom_positions" in feat:  # RunModel.predict's initial guess (zeros from ColabFold)
        jax_prev["prev_pos"] = cpu_prev["prev_pos"] = np.asarray(feat["all_atom_positions"], np.float16)
    key = jax.random.PRNGKey(seed)
    n = passes or cfg.model.num_recycle + 1
    for r in range(n):
        key, sub_key = jax.random.split(key)
        if multimer:
            jax_in, sub = dict(feat), {**feat, "random_key": np.asarray(sub_key)}
        else:
            sub = {k: v[r] for k, v in feat.items()}
            jax_in = jax.tree_util.tree_map(lambda x: x[None], sub)
        jax_ret = jax.tree_util.tree_map(np.asarray, jax_runner.apply(jax_runner.params, sub_key,
                                                                      {**jax_in, "prev": jax_prev}))
        jax_prev = _to_float16(jax_ret.pop("prev"))
        if cpu_runner is not None:
            cpu_ret, cpu_next = cpu_runner.forward_pass(sub, cpu_prev)
            cpu_prev = _to_float16(cpu_next)
        if history is not None:
            history.append((jax_ret, cpu_ret if cpu_runner is not None else None))
    return jax_ret, (cpu_ret if cpu_runner is not None else None)
