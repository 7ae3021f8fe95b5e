"""Errors raised while converting AlphaFold2 weight files."""

from __future__ import annotations


class ConversionError(ValueError):
    """A params file cannot be converted; the one-line message names the file and the fix."""
