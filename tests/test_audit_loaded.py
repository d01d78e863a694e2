"""What actually ran (--report-loaded, README "What actually ran"): the audit library reports
every object the app's processes load, and the executor's findings name the MPI library, the
transports and what was injected. Real apps run as the ordinary user; the RDMA node is a
simulated host root (named as such), the app really runs over shared memory here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import hostmpi
import images
import pytest
from dirimage import busybox_dir
from hostroot import bare_node

from shim.errors import ExitCode

LIBEXEC = Path(__import__("shim").__file__).parent / "libexec"


@pytest.fixture(scope="module")
def site_conf(world_dir: Path) -> Path:
    return hostmpi.write_site_conf(world_dir / "audit-site-conf", hostmpi.build_host_mpi().prefix)


@pytest.fixture(scope="module")
def mpich_sif() -> Path:
    return images.build_sif(images.DEBIAN_MPICH)


def _lines(stderr: str, code: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if f": {code}: " in ln]


def test_the_audit_library_needs_nothing_not_even_libc():
    lib = LIBEXEC / "shim_audit.so"
    dynamic = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True, check=True).stdout
    assert "NEEDED" not in dynamic
    symbols = subprocess.run(["nm", "-D", lib], capture_output=True, text=True, check=True).stdout.split("\n")
    assert sorted(s.split()[-1] for s in symbols if s.strip()) == ["la_objopen", "la_version"]


def test_injected_mpi_is_named_with_its_host_path(shim, site_conf, mpich_sif):
    r = shim.run(["--report-loaded", "--conf", site_conf, mpich_sif, "/opt/app/hello"])
    assert r.returncode == 0, r.stderr
    assert "MPICH Version:      5.0" in r.stdout
    (line,) = _lines(r.stderr, "MPI-LOADED")
    host = hostmpi.build_host_mpi().prefix / "lib" / "libmpi.so.12"
    assert "libmpi.so.12 (host: " in line and str(host) in line.replace("(host: ", "")
    r2 = shim.run(["--report-loaded", "--conf", site_conf, mpich_sif, "/opt/app/hello"])  # from the record
    assert _lines(r2.stderr, "MPI-LOADED") == [line]


def test_the_images_own_mpi_with_its_release(shim, site_conf, mpich_sif):
    r = shim.run(["--report-loaded", "--no-profiles", "--conf", site_conf, mpich_sif, "/opt/app/hello"])
    assert r.returncode == 0, r.stderr
    (line,) = _lines(r.stderr, "MPI-LOADED")
    assert "libmpich.so.12" in line and "4.0.2" in line and "(host: " not in line


def test_rdma_unused_on_a_simulated_rdma_node(shim, site_conf, mpich_sif, world_dir):
    """Simulated: the host root declares an InfiniBand device; the app really runs over shared
    memory on this machine, so it loads UCX and no RDMA provider."""
    node = bare_node(world_dir / "rdma-node").rdma_device("mlx5_0", (("4: ACTIVE", "InfiniBand"),))
    node.root.chmod(0o755)
    for p in node.root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    r = shim.run(["--report-loaded", "--no-profiles", "--conf", site_conf, mpich_sif, "/opt/app/hello"],
                 env={"SHIMRUN_HOST_ROOT": str(node.root)})
    assert r.returncode == 0, r.stderr
    (line,) = _lines(r.stderr, "RDMA-UNUSED")
    assert "mlx5_0" in line and "libucp.so" in line and "warning" in line
    strict = shim.run(["--report-loaded", "--strict", "--no-profiles", "--conf", site_conf, mpich_sif,
                       "/opt/app/hello"], env={"SHIMRUN_HOST_ROOT": str(node.root)})
    assert strict.returncode == ExitCode.AFTER_START, strict.stderr
    assert "allreduce sum=1 expected=1 ok" in strict.stdout
    quiet = shim.run(["--report-loaded", "--quiet", "--no-profiles", "--conf", site_conf, mpich_sif,
                      "/opt/app/hello"], env={"SHIMRUN_HOST_ROOT": str(node.root)})
    assert quiet.returncode == 0 and "RDMA-UNUSED" not in quiet.stderr


def test_site_policy_ignore_and_error(shim, site_conf, mpich_sif, world_dir):
    node = bare_node(world_dir / "rdma-node-policy").rdma_device("mlx5_0", (("4: ACTIVE", "InfiniBand"),))
    for p in [node.root, *node.root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    for action, code in (("ignore", 0), ("error", ExitCode.AFTER_START)):
        conf = world_dir / f"audit-conf-{action}"
        hostmpi.write_site_conf(conf, hostmpi.build_host_mpi().prefix)
        (conf / "shim.toml").write_text(f'[launch]\nbinds = []\n[policy.codes]\nRDMA-UNUSED = "{action}"\n'
                                        "[audit]\nreport = true\n")
        r = shim.run(["--no-profiles", "--conf", conf, mpich_sif, "/opt/app/hello"],
                     env={"SHIMRUN_HOST_ROOT": str(node.root)})
        assert r.returncode == code, r.stderr
        assert ("error: RDMA-UNUSED" in r.stderr) == (action == "error")
        assert "MPI-LOADED" in r.stderr  # the site's [audit] report is on


def test_children_through_a_shell_and_a_subprocess_are_reported(shim, user_dir):
    """sh runs python3, which runs a child through subprocess (close_fds: it loses the socket,
    its loader reports through the FIFO)."""
    sif = images.build_sif(images.DEBIAN_SCIPY)
    out = user_dir / "prov.json"
    script = "import subprocess; subprocess.run(['/usr/bin/ls', '/'], close_fds=True, stdout=subprocess.DEVNULL)"
    r = shim.run(["--provenance", out, sif, "sh", "-c", f"python3 -c \"{script}\""])
    assert r.returncode == 0, r.stderr
    assert "MPI-LOADED" not in r.stderr  # --provenance alone: the list, no findings
    loaded = json.loads(out.read_text())["loaded"]
    assert all(set(o) == {"path", "host", "sha256", "pid", "exe"} for o in loaded)
    paths = {o["path"]: o for o in loaded}
    assert any(p.endswith("/dash") for p in paths)
    assert any(p.startswith("/usr/bin/python3") for p in paths)
    assert paths["/usr/bin/ls"]["pid"] not in {o["pid"] for o in loaded if o["path"].startswith("/usr/bin/python3")}
    assert any(p.endswith("/libselinux.so.1") for p in paths)  # ls's own library, from the FIFO


def test_a_software_rdma_provider_is_named_emulated(shim, site_conf, mpich_sif, world_dir):
    """Simulated: the host root declares an InfiniBand device. The app loads the image's real
    rdma-core Soft-RoCE provider (LD_PRELOAD stands in for libibverbs choosing it for an rxe
    device, which this machine lacks): RDMA-EMULATED names it."""
    node = bare_node(world_dir / "rxe-node").rdma_device("rxe0", (("4: ACTIVE", "Ethernet"),))
    node.root.chmod(0o755)
    for p in node.root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    rxe = "/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so"
    r = shim.run(["--report-loaded", "--no-profiles", "--conf", site_conf, mpich_sif, "sh", "-c",
                  f"LD_PRELOAD={rxe} /opt/app/hello"], env={"SHIMRUN_HOST_ROOT": str(node.root)})
    assert r.returncode == 0, r.stderr
    (line,) = _lines(r.stderr, "RDMA-EMULATED")
    assert "librxe-rdmav34.so" in line and "emulated in software" in line, line


def test_an_injected_library_never_loaded_is_named(shim, site_conf, mpich_sif):
    r = shim.run(["--report-loaded", "--conf", site_conf, mpich_sif, "/bin/true"])
    assert r.returncode == 0, r.stderr
    unused = _lines(r.stderr, "INJECTED-UNUSED")
    host = hostmpi.build_host_mpi().prefix / "lib" / "libmpi.so.12"
    assert any(str(host) in ln and "was never loaded" in ln for ln in unused), r.stderr
    used = shim.run(["--report-loaded", "--conf", site_conf, mpich_sif, "/opt/app/hello"])
    assert not any(str(host) in ln for ln in _lines(used.stderr, "INJECTED-UNUSED")), used.stderr


def test_a_static_binary_is_not_audited_and_still_runs(shim, busybox_sif):
    r = shim.run(["--report-loaded", busybox_sif, "/bin/echo", "hi"])
    assert r.returncode == 0 and r.stdout == "hi\n", r.stderr
    (line,) = _lines(r.stderr, "AUDIT-UNAVAILABLE")
    assert "static binary" in line


def _musl_image(root: Path) -> Path:
    """A directory image of a musl program (an Alpine-like userland: musl's loader and libc, no
    glibc), built with Debian's musl-gcc: the program's PT_INTERP names musl's loader."""
    tree = busybox_dir(root / "musl-img")
    src = root / "hello.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("hello from musl"); return 0; }\n')
    app = tree / "app"
    subprocess.run(["musl-gcc", "-o", app, src], check=True)  # dynamic: musl's loader runs it
    interp = subprocess.run(["readelf", "-l", app], capture_output=True, text=True, check=True).stdout
    loader = re.search(r"interpreter: (\S+)\]", interp).group(1)  # /lib/ld-musl-ARCH.so.1
    (tree / loader.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(os.path.realpath(loader), tree / loader.lstrip("/"))
    (tree / loader.lstrip("/")).chmod(0o755)
    app.chmod(0o755)
    return tree


@pytest.mark.skipif(shutil.which("musl-gcc") is None, reason="musl-tools (requirements-apt.txt) is not installed")
def test_a_musl_image_is_not_audited_and_its_app_still_runs(shim, user_dir):
    image = _musl_image(user_dir)
    r = shim.run(["--report-loaded", image, "/app"])
    assert r.returncode == 0 and r.stdout == "hello from musl\n", r.stderr
    (line,) = _lines(r.stderr, "AUDIT-UNAVAILABLE")
    assert "musl" in line, line
    env = shim.run(["--report-loaded", image, "/bin/busybox", "env"])
    assert "LD_AUDIT" not in env.stdout  # nothing asked of a loader that has no audit interface


def test_the_apps_own_ld_audit_keeps_working(shim, mpich_sif, user_dir):
    own = user_dir / "own_audit.so"
    src = user_dir / "own_audit.c"
    src.write_text('#define _GNU_SOURCE\n#include <link.h>\n#include <unistd.h>\n'
                   'unsigned la_version(unsigned v) { return v; }\n'
                   'unsigned la_objopen(struct link_map *m, Lmid_t l, uintptr_t *c) {\n'
                   '  (void)l; (void)c; if (m->l_name[0]) { write(2, "OWN:", 4); '
                   'write(2, m->l_name, __builtin_strlen(m->l_name)); write(2, "\\n", 1); } return 0; }\n')
    subprocess.run(["cc", "-shared", "-fPIC", "-o", own, src], check=True)
    own.chmod(0o755)
    r = shim.run(["--report-loaded", "--bind", f"{user_dir}:/own", "--env", "LD_AUDIT=/own/own_audit.so", mpich_sif,
                  "/opt/app/hello"])
    assert r.returncode == 0, r.stderr
    assert "OWN:" in r.stderr and "libmpich.so.12" in r.stderr
    assert _lines(r.stderr, "MPI-LOADED")


def test_a_launch_without_it_has_no_ld_audit_and_no_extra_process(shim, mpich_sif):
    r = shim.run([mpich_sif, "sh", "-c", "tr '\\0' '\\n' < /proc/self/environ; echo PARENT=$(cat /proc/$PPID/comm)"])
    assert r.returncode == 0, r.stderr
    assert "LD_AUDIT" not in r.stdout and "PARENT=shimrun" not in r.stdout
    r = shim.run(["--report-loaded", mpich_sif, "sh", "-c", "tr '\\0' '\\n' < /proc/self/environ"])
    assert "LD_AUDIT=/.shim/audit/shim_audit.so" in r.stdout


def test_a_musl_program_and_a_foreign_architecture_are_not_audited(tmp_path):
    """The look's judgement on a root (unit): a program whose loader is musl's, and an image of
    another architecture (run under emulation), are named with the reason."""
    from shim.audit.look import unavailable
    from shim.image.arch import host_arch

    src = tmp_path / "app.c"
    src.write_text("int main(void) { return 0; }\n")
    (tmp_path / "bin").mkdir()
    subprocess.run(["cc", "-o", tmp_path / "bin" / "app", src, "-Wl,--dynamic-linker=/lib/ld-musl-x86_64.so.1"],
                   check=True)
    assert "musl" in unavailable(str(tmp_path), "/bin/app", "", host_arch())
    assert unavailable(str(tmp_path), "app", "/bin", host_arch()).startswith("/bin/app runs under musl's loader")
    other = "arm64" if host_arch() != "arm64" else "amd64"
    assert "emulation" in unavailable(str(tmp_path), "/bin/app", "", other)
