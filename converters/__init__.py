"""AlphaFold2 weight files -> the engine's layout (imported as ``af2cpu_plugin.converters``).

* :func:`load_params` - npz -> ``{"scope//name": torch.Tensor}``, via a cached
  safetensors file keyed by the npz content hash.
* :func:`convert_data_dir` - convert every ``params_model_*.npz`` of a data dir.
* :func:`fuse_triangle_multiplication` - the unfused -> fused triangle
  multiplication layout (as ColabFold's ``use_fuse=True``).
* :func:`nested` - flat keys -> haiku's ``{scope: {name: array}}``.
"""

from .errors import ConversionError
from .fuse import fuse_triangle_multiplication, is_unfused
from .hashing import file_sha256
from af2cpu_plugin.engine.params import nested

from .load import load_params
from .npz_reader import read_npz
from .npz_to_safetensors import CONVERTER_FORMAT_VERSION, convert_arrays, convert_npz
from .params_cache import convert_data_dir, converted_name, ensure_converted, find_cached
from .cache_dirs import CACHE_ENV, user_cache_dir
from .validate import check_expected

__all__ = [
    "CACHE_ENV",
    "CONVERTER_FORMAT_VERSION",
    "ConversionError",
    "check_expected",
    "convert_arrays",
    "convert_data_dir",
    "convert_npz",
    "converted_name",
    "ensure_converted",
    "file_sha256",
    "find_cached",
    "fuse_triangle_multiplication",
    "is_unfused",
    "load_params",
    "nested",
    "read_npz",
    "user_cache_dir",
]
