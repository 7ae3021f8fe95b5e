"""Peak memory of the template embedding (Suppl. Alg. 2 lines 9-12, Alg. 16 and 17) at long lengths.

Model 1's template embedding at full width (random weights), T templates of
L residues (synthetic backbones: only their sizes matter here), the query
pair [L, L, 128] random; each (L, T) in a fresh child process pinned to the
same CPUs, under the policy the runner uses from 512 residues (4 channel
groups, the default row slices). Reported: the peak RSS above the RSS just
before the call, in GiB and in fp32 pair tensors ([L, L, 128]), and the time.

    python bench/template_memory.py --lengths 600,1000 --templates 4

For an A/B against another checkout, put it first on the path:
``PYTHONPATH=/tmp/wt python bench/template_memory.py ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GIB = 1 << 30


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(num_res: int, num_templates: int, threads: int) -> dict:
    from af2cpu_plugin.cli import _setup_environment

    _setup_environment()
    import numpy as np
    import torch
    from alphafold.model import config

    from af2cpu_plugin.engine.params import bind_params, expected_params
    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.engine.templates import TemplateEmbedding

    torch.set_num_threads(threads)
    cfg = config.model_config("model_1_ptm").model.embeddings_and_evoformer
    module = TemplateEmbedding(cfg.template, cfg.pair_channel).eval()
    rng = np.random.default_rng(0)
    shapes = expected_params(module, root="template_embedding")
    bind_params(module, {k: (rng.normal(size=s) / np.sqrt(s[-2] if len(s) > 1 else 1)).astype(np.float32) + (
        1.0 if k.endswith("scale") else 0.0) for k, s in shapes.items()}, root="template_embedding")

    L, T = num_res, num_templates
    steps = rng.normal(size=(T, L, 3)) * 2.2
    trace = np.cumsum(steps, axis=1)  # a random walk of about 3.8 Å steps
    positions = trace[:, :, None, :] + rng.normal(size=(T, L, 37, 3)) * 0.8
    feats = [torch.from_numpy(a) for a in (
        rng.integers(0, 20, size=(T, L)), trace.astype(np.float32), np.ones((T, L), np.float32),
        positions.astype(np.float32), np.ones((T, L, 37), np.float32), np.ones(T, np.float32))]
    query = torch.randn(L, L, cfg.pair_channel)
    pair_mask = torch.ones(L, L)
    before = _rss()
    start = time.perf_counter()
    with torch.inference_mode(), RuntimePolicy(channel_groups=4).active():
        out = module(query, *feats, pair_mask)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert torch.isfinite(out).all()
    return {"num_res": L, "templates": T, "seconds": seconds, "above_start_bytes": peak - before,
            "pair_bytes": L * L * cfg.pair_channel * 4}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="600,1000")
    ap.add_argument("--templates", type=int, default=4)
    ap.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    from af2cpu_plugin.cpu import cpu_info

    import af2cpu_plugin

    print(f"# {cpu_info().describe()}; af2cpu from {os.path.dirname(af2cpu_plugin.__file__)}")
    print("| residues | templates | peak above start | in fp32 pairs | seconds |")
    print("|---|---|---|---|---|")
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    for length in (int(x) for x in args.lengths.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--child", str(length), str(args.templates), str(args.threads)],
                              capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {length} | {args.templates} | {row['above_start_bytes'] / GIB:.2f} GiB | "
              f"{row['above_start_bytes'] / row['pair_bytes']:.2f} | {row['seconds']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
