"""`python -m shim ARGS`: the Python implementation of shimrun (the native front-end's fallback)."""

from shim.cli.main import entry

entry()
