"""shim: an HPC node-side container runtime shim.

Pipeline: image -> host facts -> container facts -> injection plan -> diagnostics -> launch.
"""

__version__ = "0.1.0"
