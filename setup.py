"""shim: HPC node-side container runtime shim. The C core in csrc/ is built with cffi."""

import os
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithFrontend(build_py):
    """Also build the native `shimrun` (csrc/frontend.c and the whole C core) into shim/libexec/:
    it runs launch records without starting Python, and the planner otherwise."""

    def run(self) -> None:
        super().run()
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from shim import cgen  # the shared constants, from their Python definitions

        cgen.write("csrc/gen")
        # The site's configuration directory is fixed here, at install: its image policy and
        # provenance directory hold whatever a user's settings name (shim/site/config.py).
        sysconf = os.path.abspath(os.environ.get("SHIM_SYSCONFDIR") or "/etc/shim")
        with open(os.path.join(self.build_lib, "shim", "_install.py"), "w") as f:
            f.write(f'"""Written by setup.py at install."""\n\nSYSTEM_CONF_DIR = {sysconf!r}\n')
        out = os.path.join(self.build_lib, "shim", "libexec", "shimrun")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cc = os.environ.get("CC", "cc")
        sources = sorted(os.path.join("csrc", n) for n in os.listdir("csrc") if n.endswith(".c"))
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-std=gnu11", "-Icsrc", f'-DSHIM_PYTHON="{sys.executable}"',
                        "-o", out, *sources], check=True)
        # The audit library (LD_AUDIT) loads into the image's processes: it needs nothing, not even
        # libc, so that it loads under any glibc (csrc/audit/shim_audit.c).
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-std=gnu11", "-nostdlib", "-ffreestanding", "-fPIC", "-shared",
                        "-fno-stack-protector", "-fno-builtin", "-Wl,-z,noexecstack", "-Wl,--hash-style=both",
                        "-o", os.path.join(self.build_lib, "shim", "libexec", "shim_audit.so"),
                        "csrc/audit/shim_audit.c"], check=True)

setup(
    name="shim",
    version="0.1.0",
    description="Run SIF/directory images unprivileged on HPC nodes, injecting host-optimized libraries safely",
    python_requires=">=3.11",
    packages=find_packages(include=["shim", "shim.*"]) + ["shim.conf"],
    # The site configuration and example profiles live in conf/ and ship as shim/conf.
    package_dir={"shim.conf": "conf"},
    package_data={"shim": ["stage/README", "knowledge/*.json"],
                  "shim.conf": ["*.toml", "profiles/*.toml", "profiles/*.md", "profiles/examples/*.toml"]},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["csrc/build_core.py:ffibuilder"],
    install_requires=["cffi>=1.15", "psutil>=5.9", "pyelftools>=0.29", "nvidia-ml-py>=12", "cryptography>=41"],
    extras_require={"test": ["pytest>=7", "mpi4py>=3.1"]},
    entry_points={"console_scripts": ["shimrun=shim.cli.main:entry"]},
    cmdclass={"build_py": BuildWithFrontend},
    zip_safe=False,
)
