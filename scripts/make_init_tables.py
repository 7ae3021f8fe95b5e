"""Write af2cpu_plugin/random_init/<architecture>.json: what haiku's init gives each array of a model.

One haiku init per architecture (a model type, and for the monomer types
whether the model embeds templates: models 1-2 do, 3-5 do not), recorded by
``random_params.init_table``; ``af2cpu random-params`` then draws every file
from these tables with numpy in seconds. Rerun when ColabFold's model or
config changes (about 90 s per architecture on 2 cores):

    python scripts/make_init_tables.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> int:
    from af2cpu_plugin.atomic import atomic_write_bytes
    from af2cpu_plugin.random_params import INIT_TABLES, MODEL_TYPES, architecture, haiku_init, init_table

    INIT_TABLES.mkdir(exist_ok=True)
    done = set()
    for model_type in MODEL_TYPES:
        for n in (1, 2, 3, 4, 5):
            name = architecture(model_type, n)
            if name in done:
                continue
            done.add(name)
            table = init_table(haiku_init(model_type, n, key_seed=0))
            atomic_write_bytes(INIT_TABLES / f"{name}.json", json.dumps(table, separators=(",", ":")).encode())
            print(f"{name}: {len(table)} arrays from model {n}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
