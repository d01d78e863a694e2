"""shim: HPC node-side container runtime shim. The C core in csrc/ is built with cffi."""

from setuptools import find_packages, setup

setup(
    name="shim",
    version="0.1.0",
    description="Run SIF/directory images unprivileged on HPC nodes, injecting host-optimized libraries safely",
    python_requires=">=3.11",
    packages=find_packages(include=["shim", "shim.*"]) + ["shim.conf"],
    # The site configuration and example profiles live in conf/ and ship as shim/conf.
    package_dir={"shim.conf": "conf"},
    package_data={"shim": ["stage/README", "data/*"], "shim.conf": ["*.toml", "profiles/*.toml", "profiles/*.md", "profiles/examples/*.toml"]},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["csrc/build_core.py:ffibuilder"],
    install_requires=["cffi>=1.15", "psutil>=5.9", "pyelftools>=0.29", "nvidia-ml-py>=12"],
    extras_require={"test": ["pytest>=7", "mpi4py>=3.1"]},
    entry_points={"console_scripts": ["shimrun=shim.cli.main:entry"]},
    zip_safe=False,
)
