"""Property and fuzz tests (hypothesis) of what comes from outside: params files and input files.

* Any damage to an npz (truncated, a flipped byte, an overwritten run) is a
  ``ConversionError`` or reads back exactly the original arrays: never other
  arrays, never another exception.
* Any flipped byte in a converted safetensors cache is never used: the load
  returns exactly the original arrays.
* Any input file (text or bytes, as FASTA, A3M, CSV or TSV) is read by the CLI
  or refused in one line; well-formed queries are never refused.
"""

from __future__ import annotations

import argparse
import io
import os
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from af2cpu_plugin import cli, converters  # noqa: E402
from af2cpu_plugin.converters import ConversionError  # noqa: E402
from af2cpu_plugin.hooks.errors import UsageError  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCOPE = "alphafold/alphafold_iteration/evoformer/preprocess_1d"
ARRAYS = {
    f"{SCOPE}//weights": np.random.default_rng(0).normal(size=(22, 16)).astype(np.float32),
    f"{SCOPE}//bias": np.random.default_rng(1).normal(size=(16,)).astype(np.float32),
    "alphafold/alphafold_iteration/evoformer/left_single//weights":
        np.random.default_rng(2).normal(size=(22, 8)).astype(np.float32),
}


def _npz_bytes(compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **ARRAYS)
    return buffer.getvalue()


NPZ = {False: _npz_bytes(False), True: _npz_bytes(True)}


def _quiet(message: str) -> None:
    pass


def _same_as_original(loaded) -> bool:
    return sorted(loaded) == sorted(ARRAYS) and all(np.array_equal(loaded[k].numpy(), ARRAYS[k]) for k in ARRAYS)


@st.composite
def damaged(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    patch = draw(st.binary(min_size=1, max_size=64))
    return (data[:at] + patch + data[at + len(patch):])[: len(data)]


@FUZZ
@given(st.data(), st.booleans())
def test_a_damaged_npz_is_refused_or_read_exactly(data, compressed):
    broken = data.draw(damaged(NPZ[compressed]))
    with tempfile.TemporaryDirectory() as d:
        npz = Path(d) / "params" / "params_model_1_ptm.npz"
        npz.parent.mkdir()
        npz.write_bytes(broken)
        try:
            loaded = converters.load_params(npz, _quiet)
        except ConversionError as exc:
            assert str(npz) in str(exc) and "\n" not in str(exc)
            return
        assert _same_as_original(loaded)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """An npz and its converted cache (bytes), made once."""
    d = tmp_path_factory.mktemp("converted")
    npz = d / "params" / "params_model_1_ptm.npz"
    npz.parent.mkdir()
    npz.write_bytes(NPZ[False])
    converters.load_params(npz, _quiet)
    (cache,) = npz.parent.glob("*.safetensors")
    return cache.name, cache.read_bytes()


@FUZZ
@given(st.data())
def test_a_flipped_byte_in_the_converted_cache_is_never_used(converted, data):
    name, good = converted
    at = data.draw(st.integers(0, len(good) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor")
    with tempfile.TemporaryDirectory() as d:
        npz = Path(d) / "params" / "params_model_1_ptm.npz"
        npz.parent.mkdir()
        npz.write_bytes(NPZ[False])
        (npz.parent / name).write_bytes(good[:at] + bytes([good[at] ^ mask]) + good[at + 1:])
        assert _same_as_original(converters.load_params(npz, _quiet))


# ---------------------------------------------------------------------------
# input files
# ---------------------------------------------------------------------------

SUFFIXES = (".fasta", ".a3m", ".csv", ".tsv", ".pdb", ".cif")


def _read(path: Path):
    args = argparse.Namespace(input=str(path), sort_queries_by="length", model_type="auto")
    return cli.read_input(args)


@FUZZ
@given(st.one_of(st.text(max_size=300).map(str.encode), st.binary(max_size=300)), st.sampled_from(SUFFIXES))
def test_any_input_file_is_read_or_refused_in_one_line(content, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"input{suffix}"
        path.write_bytes(content)
        try:
            model_type, is_complex = _read(path)
        except UsageError as exc:
            assert exc.line() and "\n" not in exc.line()
            return
        assert model_type in ("alphafold2_ptm", "alphafold2_multimer_v3")


@st.composite
def fasta_queries(draw):
    names = draw(st.lists(st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12),
                          min_size=1, max_size=4, unique=True))
    residues = st.text("ACDEFGHIKLMNPQRSTVWYX", min_size=1, max_size=60)
    records = []
    for name in names:
        chains = draw(st.lists(residues, min_size=1, max_size=3))
        records.append((name, ":".join(chains)))
    return records


@FUZZ
@given(fasta_queries(), st.booleans())
def test_well_formed_queries_are_never_refused(records, lower):
    text = "".join(f">{name}\n{sequence.lower() if lower else sequence}\n" for name, sequence in records)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "input.fasta"
        path.write_text(text)
        model_type, is_complex = _read(path)
    assert is_complex == any(":" in sequence for _, sequence in records)
    assert model_type == ("alphafold2_multimer_v3" if is_complex else "alphafold2_ptm")
