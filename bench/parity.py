"""Full-depth parity of the cpu engine with ColabFold's JAX model (the oracle).

Random AF2 weights (exact npz format, written once into a data dir and
converted to safetensors by the plugin's converter), ColabFold's feature
pipeline, both runners in fp32 on identical processed features. Reports max
and mean |Δ| of final atom positions, pLDDT, PAE and pTM, and the noise floor:
JAX against itself with ``msa_feat`` perturbed by one float32 ulp.

    python bench/parity.py                      # every case, 3 recycles, fp32
    python bench/parity.py --case single130 --num-recycle 1
    python bench/parity.py --precision bf16     # cpu bf16 and JAX bf16, each against JAX fp32
    python bench/parity.py --case single130 --floor-samples 10   # a floor of 10 nudges, cpu on each input too

With ``--precision bf16`` the reference stays JAX in fp32, and the bar is
ColabFold's own bf16 error: cpu bf16 against JAX fp32 must be no worse than
JAX bf16 (``use_bfloat16=True``, ColabFold's default) against JAX fp32.

Cases: ``deep_msa`` (59 aa, 7,797 sequences: fills 512 clusters + 5,120 extra),
``single130`` (the 130-residue chain of the shared AF2 prediction, single
sequence) and ``templates130`` (the same chain with that prediction's mmCIF as
a custom template, found by ColabFold's offline hhsearch; model 1, which
embeds templates); multimer v3 (model 1) on ``heteromer`` (the deep-MSA 59-aa
chain with its MSA and the 130-aa chain as a single sequence) and ``homodimer``
(two copies of the deep-MSA chain), with ColabFold's v3 budgets (508 clusters,
2,048 extra). Multimer samples its MSA inside the model, so its noise floor
nudges the weights that first read the MSA features by one ulp instead. Prints a markdown table and writes bench/results/parity[_bf16]_CASE.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AF2CPU_SHARED_DATA", ROOT.parent / "shared" / "data" / "colabfold-test-data"))
DATA = ROOT / "tests" / "data"  # ColabFold's small test structure travels with the repository
TARGETS = {"coordinates (Å)": 0.05, "pLDDT": 0.1, "PAE": 0.05, "ipTM": 0.005}


MULTIMER_CASES = ("heteromer", "homodimer")


def multimer_chains(name: str):
    """``(sequence, copies, unpaired a3m or None)`` per unique chain of a multimer case."""
    deep = case_input("deep_msa")
    deep_query = deep.splitlines()[1].strip()
    if name == "homodimer":
        return [(deep_query, 2, deep)]
    if name == "heteromer":
        return [(deep_query, 1, deep), (case_input("single130"), 1, None)]
    raise SystemExit(f"unknown multimer case {name!r}")


def case_input(name: str) -> str:
    if name == "deep_msa":
        return (SHARED / "deep_msa_59aa_7797seqs.a3m").read_text()
    if name in ("single130", "templates130"):
        from alphafold.common import protein, residue_constants

        prot = protein.from_pdb_string((DATA / "ERR550519_2213899_unrelaxed_model_1.pdb").read_text())
        return "".join(residue_constants.restypes_with_x[a] for a in prot.aatype)
    raise SystemExit(f"unknown case {name!r}; use deep_msa, single130 or templates130")


def template_features(query: str):
    """ColabFold's features for --templates --custom-template-path (a scratch copy of the mmCIF)."""
    import shutil
    import tempfile

    from af2cpu_plugin.testing import parity

    work = Path(tempfile.mkdtemp(prefix="af2cpu-templates-"))
    (work / "templates").mkdir()
    shutil.copy(DATA / "ERR550519_2213899_unrelaxed_model_1.cif", work / "templates" / "1err.cif")
    return parity.custom_template_features(query, work / "templates", work)


# One-ulp perturbations of the input for the noise floor. One sample of a
# chaotic system is itself noisy, so the floor is the largest of three; with
# --floor-samples N, N - 3 more draws move each msa_feat element one ulp up,
# down or not at all (perturbed_by_one_ulp's seed), and the report also gives
# the median and where cpu-vs-JAX ranks among the N samples. With N > 3 (monomer
# cases) the cpu engine also runs on each nudged input against JAX on the same
# input: N samples of cpu-vs-JAX beside N of JAX-vs-JAX, since one chaotic final
# pass is one draw.
PERTURBATIONS = {
    "msa_feat +1 ulp": ("msa_feat", np.inf),
    "msa_feat -1 ulp": ("msa_feat", -np.inf),
    "target_feat +1 ulp": ("target_feat", np.inf),
}
# Multimer builds its MSA features inside the model, so the same one-ulp
# nudge goes to the weights that first read them (the same relative change of
# the first activations).
_EVO = "alphafold/alphafold_iteration/evoformer/"
MULTIMER_PERTURBATIONS = {
    "preprocess_msa +1 ulp": (_EVO + "preprocess_msa//weights", np.inf),
    "preprocess_msa -1 ulp": (_EVO + "preprocess_msa//weights", -np.inf),
    "preprocess_1d +1 ulp": (_EVO + "preprocess_1d//weights", np.inf),
}


def floor_perturbations(multimer: bool, samples: int):
    """``label -> (key, direction, seed)``: the three fixed nudges, then ``samples - 3`` random ones."""
    fixed = MULTIMER_PERTURBATIONS if multimer else PERTURBATIONS
    out = {label: (key, direction, None) for label, (key, direction) in fixed.items()}
    key = next(iter(fixed.values()))[0]
    for i in range(max(0, samples - len(out))):
        out[f"{key.split('/')[-3] if multimer else key} ±1 ulp, random draw {i}"] = (key, 0.0, i)
    return out


def floor_spread(floors, diffs, cpu_on_nudged):
    """Per quantity: the median of the floor samples' max |Δ|, how many samples cpu-vs-JAX exceeds, and
    (when the cpu ran on the nudged inputs too) the median of cpu-vs-JAX's max |Δ| over every input."""
    out = {}
    for q, (mx, _) in diffs.items():
        maxima = [row[q][0] for row in floors.values()]
        out[q] = {"median_max": float(np.median(maxima)), "cpu_exceeds": sum(mx > m for m in maxima),
                  "samples": len(maxima)}
        if cpu_on_nudged:
            out[q]["cpu_median_max"] = float(np.median([mx, *(row[q][0] for row in cpu_on_nudged.values())]))
    return out


def worst(rows):
    """Per quantity, the largest max |Δ| (and its mean) over several comparisons."""
    out = {}
    for row in rows:
        for q, (mx, mean) in row.items():
            if q not in out or mx > out[q][0]:
                out[q] = (mx, mean)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["deep_msa", "single130", "templates130", *MULTIMER_CASES, "multimer", "all"],
                    default="all", help="'multimer': heteromer and homodimer; 'all': every case")
    ap.add_argument("--num-recycle", type=int, default=3)
    ap.add_argument("--data", type=Path, default=None, help="data dir with params/ (random params are made if absent)")
    ap.add_argument("--torsion-placeholders", action="store_true",
                    help="templates130: give undefined template torsions AF2's placeholder on both engines "
                         "(zero_init=False) instead of ColabFold's float32 rounding noise")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--pair-storage", choices=["fp32", "bf16"], default="fp32",
                    help="with --precision bf16: the dtype the cpu trunk stores the pair in (bf16 is what the "
                         "runner chooses where memory is short); results go to parity_bf16pair_CASE.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="bf16 multimer cases: run with these random seeds (each draws its own MSA sample inside "
                         "the model) and report each seed and the mean over seeds; pTM and ipTM are single "
                         "scalars, so one seed is one noisy sample of their bf16 error")
    ap.add_argument("--floor-samples", type=int, default=3,
                    help="fp32: JAX-vs-JAX one-ulp runs for the noise floor (3 fixed nudges, then random draws); "
                         "more samples tell chaos from a real difference when cpu-vs-JAX lands near the floor")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    if args.floor_samples < len(PERTURBATIONS):
        ap.error(f"--floor-samples takes {len(PERTURBATIONS)} or more (the fixed nudges come first)")
    if args.pair_storage == "bf16" and args.precision != "bf16":
        ap.error("--pair-storage bf16 needs --precision bf16")
    if args.seeds != [0] and (args.precision != "bf16" or args.case not in (*MULTIMER_CASES, "multimer")):
        ap.error("--seeds is for --precision bf16 on the multimer cases (the monomer cases draw no sample in "
                 "the model; the fp32 floor is measured with seed 0)")

    from colabfold.alphafold.models import get_model_haiku_params

    from af2cpu_plugin.converters import load_params
    from af2cpu_plugin.engine.params import flatten
    from af2cpu_plugin.random_params import write_random_params
    from af2cpu_plugin.testing import parity
    from af2cpu_plugin.testing.params_cache import test_cache_root
    from af2cpu_plugin.hooks import colabfold_seam

    data = args.data or test_cache_root() / "bench-data"
    monomer_cases = ["deep_msa", "single130", "templates130"]
    cases = {"all": monomer_cases + list(MULTIMER_CASES), "multimer": list(MULTIMER_CASES)}.get(args.case,
                                                                                                [args.case])
    report = {}
    for name in cases:
        multimer = name in MULTIMER_CASES
        # Model 3 (no templates) as ColabFold runs it without --templates; model 1 with them.
        # Multimer: model 1 of v3 (every multimer model embeds templates; ColabFold's are mock ones here).
        model_type = "alphafold2_multimer_v3" if multimer else "alphafold2_ptm"
        model_number = 1 if name == "templates130" or multimer else 3
        write_random_params(data, model_type, models=(model_number,), seed=0, method="haiku")
        npz = data / "params" / colabfold_seam.params_file_name(model_type, model_number)
        jax_params = get_model_haiku_params(str(data), model_type, str(model_number), use_fuse=True,
                                            to_jnp=False)
        cpu_flat = {k: v.numpy() for k, v in load_params(npz).items()}
        text = None if multimer else case_input(name)
        if multimer:
            # colabfold.batch.run's MSA budgets for multimer v3 with an MSA: 508 clusters, 2,048 extra
            cfg = parity.colabfold_config("model_1_multimer_v3", args.num_recycle, max_seq=508, max_extra_seq=2048)
            feat = parity.multimer_features(multimer_chains(name), max_seq=508)
        elif name == "templates130":
            # colabfold.batch.run: single sequence + templates keeps 1 + 4 rows for the template torsions
            cfg = parity.colabfold_config("model_1_ptm", args.num_recycle, msa_depth=5)
            cfg.model.global_config.zero_init = not args.torsion_placeholders
            feat = parity.processed_features(cfg, text, templates=template_features(text))
        else:
            cfg = parity.colabfold_config("model_3_ptm", args.num_recycle, msa_depth=parity.msa_depth(text))
            feat = parity.processed_features(cfg, text)
        L = feat["aatype"].shape[0 if multimer else 1]
        if multimer:
            depth = {"msa_rows": int(feat["msa"].shape[0]), "msa_clusters": min(508, int(feat["msa"].shape[0])),
                     "extra_msa": max(0, min(2048, int(feat["msa"].shape[0]) - 508)),
                     "chains": [len(c[0]) for c in multimer_chains(name) for _ in range(c[1])]}
        else:
            depth = {"msa_clusters": int(feat["msa_feat"].shape[1]), "extra_msa": int(feat["extra_msa"].shape[1])}
        model_name = npz.stem.replace("params_", "")
        t = time.time()
        jax_flat = {k: np.asarray(v) for k, v in flatten(jax_params).items()}
        if args.precision == "bf16":
            per_seed = {seed: bf16_case(cfg, cpu_flat, jax_flat, feat, args.num_recycle, seed=seed,
                                        pair_storage=args.pair_storage)
                        for seed in args.seeds}
            if len(per_seed) == 1:
                report[name] = per_seed[args.seeds[0]]
                suffix = "" if args.seeds == [0] else f"_seed{args.seeds[0]}"
            else:
                report[name] = seeds_summary(per_seed)
                suffix = "_seeds"
            report[name].update({"model": model_name, "length": L, **depth, "seconds": round(time.time() - t, 1)})
            prefix = "parity_bf16pair" if args.pair_storage == "bf16" else "parity_bf16"
            _write(args.out_dir / f"{prefix}_{name}{suffix}.json", {name: report[name]})
            continue
        history = []
        jax_ret, cpu_ret = parity.run_both_fp32(cfg, cpu_flat, feat, jax_flat=jax_flat, history=history)
        first_pass = parity.compare(*history[0], interface=multimer)
        diffs = parity.compare(jax_ret, cpu_ret, interface=multimer)
        floors, cpu_on_nudged = {}, {}
        for label, (key, direction, seed) in floor_perturbations(multimer, args.floor_samples).items():
            if multimer:
                nudged = parity.perturbed_by_one_ulp(jax_flat, key, direction, seed=seed)
                jax_again, _ = parity.run_both_fp32(cfg, cpu_flat, feat, jax_flat=nudged, cpu=False)
            else:
                jax_again, cpu_again = parity.run_both_fp32(
                    cfg, cpu_flat, parity.perturbed_by_one_ulp(feat, key, direction, seed=seed), jax_flat=jax_flat,
                    cpu=args.floor_samples > len(PERTURBATIONS))
                if cpu_again is not None:
                    cpu_on_nudged[label] = parity.compare(jax_again, cpu_again)
            floors[label] = parity.compare(jax_ret, jax_again, interface=multimer)
        floor = worst(floors.values())
        spread = floor_spread(floors, diffs, cpu_on_nudged)
        report[name] = {"model": model_name, "length": L, **depth, "num_recycle": args.num_recycle,
                        "cpu_vs_jax": diffs, "cpu_vs_jax_first_pass": first_pass,
                        "jax_vs_jax_1ulp_worst": floor, "jax_vs_jax_1ulp": floors,
                        "jax_vs_jax_1ulp_spread": spread, "cpu_vs_jax_on_nudged_inputs": cpu_on_nudged,
                        "plddt_std": float(np.std(cpu_ret["plddt"])),
                        "pae_std": float(np.std(cpu_ret["predicted_aligned_error"])),
                        "seconds": round(time.time() - t, 1)}
        print(f"\n## {name}: {model_name}, {L} residues, {report[name]['msa_clusters']} clusters, "
              f"{report[name]['extra_msa']} extra, {args.num_recycle} recycles")
        print("| quantity | cpu vs JAX, first pass: max / mean |Δ| | cpu vs JAX, final: max / mean |Δ| "
              f"| JAX vs JAX (1 ulp, worst of {len(floors)}): max / mean |Δ| | floor median max "
              f"| cpu above how many floor samples | target max |")
        print("|---|---|---|---|---|---|---|")
        for q, (mx, mean) in diffs.items():
            fmx, fmean = floor[q]
            px, pm = first_pass[q]
            print(f"| {q} | {px:.2g} / {pm:.2g} | {mx:.3g} / {mean:.3g} | {fmx:.3g} / {fmean:.3g} "
                  f"| {spread[q]['median_max']:.3g} | {spread[q]['cpu_exceeds']} of {spread[q]['samples']} "
                  f"| {TARGETS.get(q, '—')} |")
        if cpu_on_nudged:
            print(f"\ncpu vs JAX on each of the {len(cpu_on_nudged) + 1} inputs, median max |Δ| (JAX vs JAX median): "
                  + ", ".join(f"{q} {spread[q]['cpu_median_max']:.3g} ({spread[q]['median_max']:.3g})"
                              for q in spread))
        sys.stdout.flush()
        _write(args.out_dir / f"parity_{name}.json", {name: report[name]})
    return 0


def _write(path: Path, report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


def _print_bf16_table(title: str, rows: dict) -> None:
    """cpu bf16 and JAX bf16 against JAX fp32, first pass and final, one row per quantity."""
    print(f"\n## {title}")
    print("| quantity | cpu bf16 vs JAX fp32, first pass | JAX bf16 vs JAX fp32, first pass "
          "| cpu bf16 vs JAX fp32, final | JAX bf16 vs JAX fp32, final |")
    print("|---|---|---|---|---|")
    for q in rows["cpu_bf16_vs_jax_fp32"]:
        cells = [f"{rows[k][q][0]:.3g} / {rows[k][q][1]:.2g}" for k in
                 ("cpu_bf16_vs_jax_fp32_first_pass", "jax_bf16_vs_jax_fp32_first_pass",
                  "cpu_bf16_vs_jax_fp32", "jax_bf16_vs_jax_fp32")]
        print(f"| {q} | " + " | ".join(cells) + " |")
    sys.stdout.flush()


def seeds_summary(per_seed: dict) -> dict:
    """Per row and quantity, the mean over seeds of max |Δ| (and of mean |Δ|); prints the table."""
    seeds = list(per_seed)
    first = per_seed[seeds[0]]
    rows = [k for k in first if isinstance(first[k], dict)]
    mean = {row: {q: tuple(float(np.mean([per_seed[s][row][q][i] for s in seeds])) for i in (0, 1))
                  for q in first[row]} for row in rows}
    _print_bf16_table(f"bf16, mean over seeds {seeds} (max |Δ| averaged over seeds / mean |Δ| averaged)", mean)
    return {"precision": "bf16", "num_recycle": first["num_recycle"], "cpu": first["cpu"], "seeds": seeds,
            "mean_over_seeds": mean, "per_seed": {str(s): {k: per_seed[s][k] for k in rows} for s in seeds}}


def bf16_case(cfg, cpu_flat, jax_flat, feat, num_recycle: int, seed: int = 0, pair_storage: str = "fp32") -> dict:
    """cpu bf16 and JAX bf16, each against JAX fp32, first pass and after the recycles; prints a table."""
    from af2cpu_plugin.cpu import cpu_info
    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.testing import parity

    cpu_history, jax_history = [], []
    jax_fp32, cpu_bf16 = parity.run_both_fp32(cfg, cpu_flat, feat, seed=seed, jax_flat=jax_flat,
                                              history=cpu_history,
                                              policy=RuntimePolicy(precision="bf16", pair_storage=pair_storage))
    parity.run_both_fp32(parity.with_bfloat16(cfg), cpu_flat, feat, seed=seed, jax_flat=jax_flat, cpu=False,
                         history=jax_history)
    jax_bf16 = jax_history[-1][0]
    iface = parity.is_multimer(cfg)
    rows = {
        "cpu_bf16_vs_jax_fp32_first_pass": parity.compare(cpu_history[0][0], cpu_history[0][1], interface=iface),
        "cpu_bf16_vs_jax_fp32": parity.compare(jax_fp32, cpu_bf16, interface=iface),
        "jax_bf16_vs_jax_fp32_first_pass": parity.compare(cpu_history[0][0], jax_history[0][0], interface=iface),
        "jax_bf16_vs_jax_fp32": parity.compare(jax_fp32, jax_bf16, interface=iface),
    }
    if parity.is_multimer(cfg):
        L, shape = feat["aatype"].shape[0], f"{feat['msa'].shape[0]} MSA rows"
    else:
        L, shape = feat["aatype"].shape[1], f"{feat['msa_feat'].shape[1]} clusters, {feat['extra_msa'].shape[1]} extra"
    _print_bf16_table(f"bf16 ({pair_storage} pair), seed {seed}: {L} residues, {shape}, {num_recycle} recycles; "
                      f"CPU: {cpu_info().describe()} (max / mean |Δ|)", rows)
    return {"precision": "bf16", "pair_storage": pair_storage, "num_recycle": num_recycle,
            "cpu": cpu_info().describe(), **rows}


if __name__ == "__main__":
    raise SystemExit(main())
