"""af2cpu-plugin: AlphaFold2 inference on CPUs for ColabFold 1.6.3, with a PyTorch engine.

Run it as ``af2cpu batch --backend cpu INPUT OUTDIR`` (any ``colabfold_batch``
option works) or ``python -m af2cpu_plugin ...``.
"""

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("af2cpu-plugin")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
