import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def offline_workdir(base: Path, **inputs: str) -> Path:
    """``base`` with the given input files (name -> text) and a data dir whose download marker stops
    ColabFold from fetching weights: for runs whose model reads no params files."""
    for name, text in inputs.items():
        (base / name).write_text(text)
    params = base / "data" / "params"
    params.mkdir(parents=True)
    (params / "download_finished.txt").write_text("")
    return base
