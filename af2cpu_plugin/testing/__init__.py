"""Helpers for comparing engine modules with ColabFold's haiku modules (the oracle)."""
