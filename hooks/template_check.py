"""Pre-flight check of the template inputs of ``af2cpu batch`` (any backend).

ColabFold reads ``--custom-template-path DIR`` in two places, and a bad file
in either ends the run badly:

* ``mk_hhsearch_db(DIR)`` (once, before the first query) validates every
  ``*.cif``, converts every ``*.pdb`` and parses all of them with Biopython:
  a file that does not parse is a traceback and exit 1 (``The input mmCIF
  file must begin with a 'data_' directive``); a missing DIR is a traceback;
* the template featuriser (per query) needs at least one ``*.cif`` in DIR
  (else "Could not find CIFs" and ColabFold SKIPS the query) and finds a hit's
  file as ``DIR/<pdb id>.cif`` from the hit name ``<stem>_<chain>``, so a file
  not named like a PDB entry (``1abc.cif``: 4 lower-case letters/digits) makes
  the query fail too.

So before ColabFold starts, :func:`check_templates` parses each candidate with
the parsers ColabFold itself uses (AlphaFold's ``mmcif_parsing.parse``, which
the featuriser uses, plus ColabFold's required-field check; Biopython's
``PDBParser`` for ``.pdb``) and then:

* DIR missing, or not a directory: a one-line usage error;
* no usable file: one warning, and the run goes on WITHOUT templates
  (``--templates`` and ``--custom-template-path`` dropped), as ColabFold runs
  a query for which no template is found;
* some unusable files: a warning naming each, and ColabFold gets a copy of
  the usable ones in ``RESULTS/templates_checked/`` (ColabFold writes its
  pdb70 index, and may patch the files, in the dir it is given);
* everything usable: nothing changes, ColabFold reads DIR itself.

``--pdb-hit-file`` (templates fetched from ``--local-pdb-path`` by ColabFold)
gets the checks ColabFold would otherwise fail on with a traceback.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from af2cpu_plugin.hooks.errors import UsageError

#: Where the usable templates are copied when some files are left out.
CHECKED_DIR_NAME = "templates_checked"

#: A template's stem must be what the featuriser's hit-name regex
#: (``[a-zA-Z\d]{4}_<chain>``) extracts and lower-cases back into a file name.
PDB_STYLE_STEM = re.compile(r"[a-z0-9]{4}")

#: Fields ``colabfold.batch.validate_and_fix_mmcif`` requires (it raises otherwise).
REQUIRED_MMCIF_FIELDS = (
    "_chem_comp.id",
    "_chem_comp.type",
    "_struct_asym.id",
    "_struct_asym.entity_id",
    "_entity_poly_seq.mon_id",
)


@dataclass
class TemplateCheck:
    """What the check found in ``requested`` and what ColabFold is given."""

    requested: str
    usable: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)  # file name -> why
    used: Optional[str] = None  # the dir ColabFold reads; None: no templates
    templates_requested: bool = True

    def warnings(self) -> List[str]:
        lines = [f"template {self.requested}/{name} is not used: {why}" for name, why in self.skipped.items()]
        if self.used is None:
            tail = "running without templates" if self.templates_requested else "ignoring --custom-template-path"
            lines.append(f"no usable mmCIF templates in {self.requested}: {tail}")
        elif self.used != self.requested:
            lines.append(f"using the {len(self.usable)} usable template(s) of {self.requested}, copied to {self.used}")
        return lines

    def record(self) -> Dict[str, Any]:
        """The ``config.json`` entry."""
        return {
            "custom_template_path": self.requested,
            "used_template_path": self.used,
            "usable_templates": list(self.usable),
            "skipped_templates": dict(self.skipped),
        }


# ---------------------------------------------------------------------------
# One file
# ---------------------------------------------------------------------------


def _first_error(errors: Dict[Any, Any]) -> str:
    for value in errors.values():
        text = " ".join(str(value).split())
        # parse() stores the exception itself; keep its message, not a repr.
        return text or type(value).__name__
    return "unknown error"


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def _mmcif_problem(path: Path) -> Optional[str]:
    """Why ColabFold cannot use this mmCIF file, or None."""
    from alphafold.data import mmcif_parsing

    try:
        text = _read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read it ({type(exc).__name__}: {exc})"
    if not text.lstrip().startswith("data_"):
        return "not an mmCIF file (it must begin with a 'data_' directive)"
    result = mmcif_parsing.parse(file_id=path.stem, mmcif_string=text, catch_all_errors=True)
    if result.mmcif_object is None:
        return f"not a readable mmCIF file ({_first_error(result.errors)})"
    missing = [f for f in REQUIRED_MMCIF_FIELDS if f not in result.mmcif_object.raw_string]
    if missing:
        return f"the mmCIF file lacks {', '.join(missing)}"
    return None


def _pdb_problem(path: Path) -> Optional[str]:
    """Why ColabFold cannot convert and use this PDB file, or None."""
    from Bio.PDB import PDBParser

    try:
        text = _read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read it ({type(exc).__name__}: {exc})"
    import io

    try:
        structure = PDBParser(QUIET=True).get_structure(path.stem, io.StringIO(text))
    except Exception as exc:  # Biopython raises many types on garbage
        return f"not a readable PDB file ({type(exc).__name__}: {' '.join(str(exc).split())})"
    models = list(structure.get_models())
    if not models or not any(True for _ in models[0].get_residues()):
        return "not a readable PDB file (no residues)"
    return None


def file_problem(path: Path) -> Optional[str]:
    """Why ColabFold cannot use ``path`` as a custom template, or None if it can."""
    if not PDB_STYLE_STEM.fullmatch(path.stem):
        return (
            f"its name is not a PDB-style id — ColabFold finds templates as <id>{path.suffix} with a 4-character "
            f"lower-case id; rename it, e.g. to 1abc{path.suffix}"
        )
    return _mmcif_problem(path) if path.suffix == ".cif" else _pdb_problem(path)


# ---------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------


def _candidates(directory: Path) -> List[Path]:
    """The files ColabFold's mk_hhsearch_db reads: ``*.cif`` first, then ``*.pdb`` (converted to ``.cif``)."""
    cifs = sorted(p for p in directory.glob("*.cif") if p.is_file())
    pdbs = sorted(p for p in directory.glob("*.pdb") if p.is_file())
    return cifs + pdbs


def _check_pdb_hit_file(args: Any) -> None:
    hit_file = getattr(args, "pdb_hit_file", None)
    if hit_file is None:
        return
    if getattr(args, "custom_template_path", None) is not None:
        raise UsageError(
            "--pdb-hit-file and --custom-template-path cannot be used together",
            "pass only one of them",
        )
    if not Path(hit_file).is_file():
        raise UsageError(f"--pdb-hit-file {hit_file} not found", "pass an existing hit file (m8 format)")
    local = getattr(args, "local_pdb_path", None)
    if local is None:
        raise UsageError("--pdb-hit-file needs --local-pdb-path", "pass --local-pdb-path DIR (a local PDB mmCIF mirror)")
    if not Path(local).is_dir():
        raise UsageError(f"--local-pdb-path {local} is not a directory", "pass the directory of a local PDB mmCIF mirror")


def check_templates(args: Any, warn: Optional[Callable[[str], None]] = None) -> Optional[TemplateCheck]:
    """Check the template options in ``args`` and adjust them; see the module doc.

    Mutates ``args.templates`` / ``args.custom_template_path`` where the run
    must go on without (some) templates. Returns what was found, or None when
    there is no ``--custom-template-path``. Raises :class:`UsageError` for a
    request that cannot run at all.
    """
    if warn is None:
        warn = lambda line: print(f"af2cpu: warning: {line}", file=sys.stderr, flush=True)  # noqa: E731
    _check_pdb_hit_file(args)
    requested = getattr(args, "custom_template_path", None)
    if requested is None:
        return None
    directory = Path(requested)
    if not directory.exists():
        raise UsageError(
            f"--custom-template-path {requested} not found",
            "pass a directory of mmCIF templates named like PDB entries (1abc.cif)",
        )
    if not directory.is_dir():
        raise UsageError(
            f"--custom-template-path {requested} is not a directory",
            "pass a directory of mmCIF templates named like PDB entries (1abc.cif)",
        )

    check = TemplateCheck(requested=str(requested), templates_requested=bool(getattr(args, "templates", False)))
    usable: List[Path] = []
    usable_stems = set()
    for path in _candidates(directory):
        if path.suffix == ".pdb" and path.stem in usable_stems:
            continue  # ColabFold converts a .pdb only when there is no .cif of that name
        problem = file_problem(path)
        if problem:
            check.skipped[path.name] = problem
        else:
            usable.append(path)
            usable_stems.add(path.stem)
    check.usable = [p.name for p in usable]

    if not usable:
        check.used = None
        args.custom_template_path = None
        args.templates = False
    elif not check.skipped:
        check.used = str(requested)
    else:
        scratch = Path(args.results) / CHECKED_DIR_NAME
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        for path in usable:
            shutil.copy2(path, scratch / path.name)
        check.used = str(scratch)
        args.custom_template_path = str(scratch)
    for line in check.warnings():
        warn(line)
    return check
