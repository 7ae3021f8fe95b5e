"""Reading an AlphaFold2 ``.npz`` params file safely (never unpickling)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Dict

import numpy as np

from .errors import ConversionError

DOWNLOAD_FIX = "download the AlphaFold2 weights again (python -m colabfold.download) or point --data at the right directory"


def read_npz(path) -> Dict[str, np.ndarray]:
    """All arrays of ``path`` as ``{key: ndarray}``; raises :class:`ConversionError` with the fix."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"params file {path} not found — {DOWNLOAD_FIX}")
    if not path.is_file():
        raise ConversionError(f"params file {path} is not a regular file — {DOWNLOAD_FIX}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ConversionError(f"{path} is a single .npy array, not an .npz params archive — {DOWNLOAD_FIX}")
            arrays = {}
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise ConversionError(
                            f"{path} holds a pickled object array ({key!r}), which is never loaded: "
                            f"not an AlphaFold params file — {DOWNLOAD_FIX}") from None
                    raise ConversionError(f"array {key!r} of {path} is unreadable ({e}) — {DOWNLOAD_FIX}") from None
    except ConversionError:
        raise
    except PermissionError as e:
        raise ConversionError(f"cannot read params file {path} ({e.strerror}) — fix its permissions (chmod a+r)") from None
    except IsADirectoryError:
        raise ConversionError(f"params file {path} is a directory — {DOWNLOAD_FIX}") from None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise ConversionError(f"cannot read params file {path} ({e.strerror}) — fix its permissions (chmod a+r)") from None
        raise ConversionError(f"params file {path} is corrupt or truncated ({e}) — {DOWNLOAD_FIX}") from None
    except Exception as e:
        # Whatever a damaged archive makes zipfile, zlib or numpy raise (found by tests/test_fuzz.py): BadZipFile,
        # EOFError, ValueError, zlib.error, NotImplementedError for a flipped compression method, RuntimeError
        # for a flipped "encrypted" bit, MemoryError for a flipped shape. Never a raw traceback; and never a
        # RuntimeError, which ColabFold's run() would report as "Not Enough GPU memory?" and skip the query.
        what = "a pickle, not an .npz archive" if "pickle" in str(e) else f"corrupt or truncated ({e})"
        raise ConversionError(f"params file {path} is {what} — {DOWNLOAD_FIX}") from None
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise ConversionError(f"array {key!r} of {path} has dtype {a.dtype}, not numeric — {DOWNLOAD_FIX}")
    if not arrays:
        raise ConversionError(f"params file {path} holds no arrays — {DOWNLOAD_FIX}")
    return arrays
