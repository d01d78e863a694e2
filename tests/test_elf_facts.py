"""shim.elf.facts and shim.elf.cache against real files: this machine's glibc, libstdc++ and
/bin/ls, and libraries built here with gcc; every fact is checked against readelf's view."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shim.elf import facts as facts_mod
from shim.elf.cache import FactsCache
from shim.elf.facts import ElfFacts, VersionNeed, dynamic_symbols, elf_facts
from shim.errors import ImageError

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "tests" / "data" / "elf"
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
LIBC = LIBDIR / "libc.so.6"
LIBSTDCXX = LIBDIR / "libstdc++.so.6"

pytestmark = pytest.mark.skipif(
    os.uname().machine != "x86_64" or not LIBC.exists() or not shutil.which("gcc") or not shutil.which("readelf"),
    reason="needs an x86_64 Debian-layout glibc host with gcc and binutils")


def sh(*args: str | os.PathLike[str], **kw) -> str:
    return subprocess.run([os.fspath(a) for a in args], check=True, capture_output=True, text=True, **kw).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """libdep.so.1 (versions DEP_1.0-3.0), libmain.so.1 (MAIN_1.0/2.0, RUNPATH $ORIGIN/../dep,
    needs libdep), libold.so.1 (DT_RPATH with two entries), and ISA-marked executables."""
    d = tmp_path_factory.mktemp("elfbuild")
    for sub in ("dep", "main", "bin"):
        (d / sub).mkdir()
    cc = ["gcc", "-O1", "-fPIC"]
    sh(*cc, "-shared", "-Wl,-soname,libdep.so.1", f"-Wl,--version-script,{SRC / 'dep.map'}",
       SRC / "dep.c", "-o", d / "dep/libdep.so.1")
    sh(*cc, "-shared", "-Wl,-soname,libmain.so.1", f"-Wl,--version-script,{SRC / 'main.map'}",
       "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/../dep", SRC / "main.c", d / "dep/libdep.so.1",
       "-o", d / "main/libmain.so.1")
    sh(*cc, "-shared", "-Wl,-soname,libold.so.1", "-Wl,--disable-new-dtags",
       "-Wl,-rpath,/opt/a:$ORIGIN/../dep", SRC / "plain.c", d / "dep/libdep.so.1", "-o", d / "main/libold.so.1")
    for level in (2, 3, 4):
        sh("gcc", "-O2", f"-march=x86-64-v{level}", "-mneeded", SRC / "isa.c", "-o", d / f"bin/isa-v{level}")
    sh("gcc", "-nostdlib", "-static", "-Wl,--build-id=none", SRC / "isa_note.s", "-o", d / "bin/note-v4")
    (d / "bare.s").write_text(".globl _start\n_start: ret\n")
    sh("gcc", "-nostdlib", "-static", d / "bare.s", "-o", d / "bin/bare")
    return d


# ---- readelf, the independent reference ----

def readelf_dynamic(path: Path) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    for m in re.finditer(r"\((NEEDED|SONAME|RPATH|RUNPATH)\)\s+[^\[]*\[(.*)\]", sh("readelf", "-dW", path)):
        tags.setdefault(m.group(1), []).append(m.group(2))
    return tags


def readelf_versions(path: Path) -> tuple[list[str], list[VersionNeed]]:
    defs: list[str] = []
    needs: list[VersionNeed] = []
    section = ""
    for line in sh("readelf", "-VW", path).splitlines():
        if line.startswith("Version definition section"):
            section = "d"
        elif line.startswith("Version needs section"):
            section = "r"
        elif line.startswith("Version symbols section"):
            section = ""
        elif section == "d" and (m := re.search(r"Flags: (\S+)\s+Index: \d+\s+Cnt: \d+\s+Name: (\S+)", line)):
            if "BASE" not in m.group(1):
                defs.append(m.group(2))
        elif section == "r" and (m := re.search(r"File: (\S+)\s+Cnt:", line)):
            needs.append(VersionNeed(m.group(1), ()))
        elif section == "r" and (m := re.search(r"Name: (\S+)\s+Flags: (.+?)\s+Version: \d+", line)):
            last = needs[-1]
            needs[-1] = VersionNeed(last.file, (*last.versions, (m.group(1), "WEAK" in m.group(2))))
    return defs, needs


def readelf_interp(path: Path) -> str | None:
    m = re.search(r"\[Requesting program interpreter: (.*)\]", sh("readelf", "-lW", path))
    return m.group(1) if m else None


def assert_matches_readelf(facts: ElfFacts, path: Path) -> None:
    tags = readelf_dynamic(path)
    assert facts.needed == tuple(tags.get("NEEDED", []))
    assert facts.soname == (tags["SONAME"][0] if "SONAME" in tags else None)
    assert facts.rpath == (tuple(":".join(tags["RPATH"]).split(":")) if "RPATH" in tags else ())
    assert facts.runpath == (tuple(":".join(tags["RUNPATH"]).split(":")) if "RUNPATH" in tags else ())
    assert facts.interp == readelf_interp(path)
    defs, needs = readelf_versions(path)
    assert facts.version_defs == tuple(defs)
    assert facts.version_needs == tuple(needs)


# ---- real system files ----

def test_libc_facts_and_versions() -> None:
    f = elf_facts(LIBC)
    assert f is not None
    assert (f.elf_class, f.machine, f.byte_order, f.arch, f.elf_type) == (64, "EM_X86_64", "little", "amd64", "ET_DYN")
    assert f.soname == "libc.so.6" and f.needed == ("ld-linux-x86-64.so.2",) and f.is_dynamic
    major, minor = (int(x) for x in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2])
    assert (major, minor) == (2, 36), "this test documents the Debian 12 host: glibc 2.36"
    for v in ("GLIBC_2.2.5", "GLIBC_2.3.4", "GLIBC_2.17", "GLIBC_2.34", "GLIBC_2.35", "GLIBC_2.36", "GLIBC_PRIVATE"):
        assert v in f.version_defs
    assert "GLIBC_2.37" not in f.version_defs
    assert "libc.so.6" not in f.version_defs  # the base definition is the file's name, not a version
    assert f.isa_level == 1  # Debian builds for baseline x86-64
    assert_matches_readelf(f, LIBC)


def test_ls_matches_readelf() -> None:
    ls = Path(os.path.realpath("/bin/ls"))
    f = elf_facts(ls)
    assert f is not None and f.interp == "/lib64/ld-linux-x86-64.so.2" and f.soname is None
    assert "libc.so.6" in f.needed
    glibc = next(n for n in f.version_needs if n.file == "libc.so.6")
    assert ("GLIBC_2.2.5", False) in glibc.versions
    assert_matches_readelf(f, ls)


def test_libstdcxx_versions() -> None:
    f = elf_facts(LIBSTDCXX)
    assert f is not None and f.soname == "libstdc++.so.6"
    for v in ("GLIBCXX_3.4", "GLIBCXX_3.4.21", "GLIBCXX_3.4.30", "CXXABI_1.3", "CXXABI_1.3.13"):
        assert v in f.version_defs
    files = {n.file: n for n in f.version_needs}
    assert {"libc.so.6", "libgcc_s.so.1", "libm.so.6"} <= files.keys()
    assert ("GCC_3.0", False) in files["libgcc_s.so.1"].versions
    assert_matches_readelf(f, LIBSTDCXX)


def test_not_elf_and_malformed(tmp_path: Path) -> None:
    assert elf_facts("/etc/passwd") is None
    assert elf_facts(tmp_path / "missing") is None
    assert elf_facts(tmp_path) is None  # a directory
    (tmp_path / "short").write_bytes(b"\x7fEL")
    assert elf_facts(tmp_path / "short") is None
    data = LIBC.read_bytes()
    for n, cut in enumerate((20, 64, 700, 4096)):
        p = tmp_path / f"cut{n}"
        p.write_bytes(data[:cut])
        with pytest.raises(ImageError, match="malformed ELF"):
            elf_facts(p)


# ---- libraries built here ----

def test_built_library(built: Path) -> None:
    path = built / "main/libmain.so.1"
    f = elf_facts(path)
    assert f is not None
    assert f.soname == "libmain.so.1"
    assert f.needed[0] == "libdep.so.1"
    assert f.runpath == ("$ORIGIN/../dep",) and f.rpath == ()
    assert f.version_defs == ("MAIN_1.0", "MAIN_2.0")
    assert VersionNeed("libdep.so.1", (("DEP_2.0", False),)) in f.version_needs
    assert f.interp is None and not f.nodeflib
    assert_matches_readelf(f, path)

    dep = elf_facts(built / "dep/libdep.so.1")
    assert dep is not None and dep.version_defs == ("DEP_1.0", "DEP_2.0", "DEP_3.0")
    assert_matches_readelf(dep, built / "dep/libdep.so.1")

    old = elf_facts(built / "main/libold.so.1")
    assert old is not None and old.rpath == ("/opt/a", "$ORIGIN/../dep") and old.runpath == ()
    assert_matches_readelf(old, built / "main/libold.so.1")


def test_weak_version_need(built: Path, tmp_path: Path) -> None:
    # GNU ld only marks a requirement weak in corner cases: set VER_FLG_WEAK on libmain's need of
    # DEP_2.0 in place, where readelf says the entry lies, and check both tools read it back.
    lib = tmp_path / "libmain.so.1"
    shutil.copy(built / "main/libmain.so.1", lib)
    out = sh("readelf", "-VW", lib)
    sec = int(re.search(r"Version needs section.*\n\s*Addr: \S+\s+Offset: (0x[0-9a-f]+)", out).group(1), 16)
    aux = int(re.search(r"(0x[0-9a-f]+):\s+Name: DEP_2.0", out).group(1), 16)
    data = bytearray(lib.read_bytes())
    data[sec + aux + 4:sec + aux + 6] = (2).to_bytes(2, "little")  # vna_flags = VER_FLG_WEAK
    lib.write_bytes(bytes(data))
    assert re.search(r"Name: DEP_2.0\s+Flags: WEAK", sh("readelf", "-VW", lib))
    f = elf_facts(lib)
    assert VersionNeed("libdep.so.1", (("DEP_2.0", True),)) in f.version_needs
    assert_matches_readelf(f, lib)


def test_isa_levels(built: Path) -> None:
    for level in (2, 3, 4):
        assert elf_facts(built / f"bin/isa-v{level}").isa_level == level
    assert elf_facts(built / "bin/note-v4").isa_level == 4  # the hand-written note
    assert elf_facts(built / "bin/bare").isa_level is None  # no property note at all
    assert elf_facts("/bin/ls").isa_level == 1


def test_dict_round_trip(built: Path) -> None:
    for p in (LIBC, LIBSTDCXX, built / "main/libmain.so.1", built / "bin/bare"):
        f = elf_facts(p)
        again = ElfFacts.from_dict(json.loads(json.dumps(f.to_dict())))
        assert again == f


def test_dynamic_symbols(built: Path) -> None:
    libc = dynamic_symbols(LIBC)
    assert {"printf", "malloc", "dlopen", "pthread_create"} <= libc.defined
    lib = dynamic_symbols(built / "main/libmain.so.1")
    assert {"main_fn", "main_old"} <= lib.defined
    assert "hidden_helper" not in lib.defined and "hidden_helper" not in lib.undefined
    assert "dep_two" in lib.undefined
    assert "malloc" in dynamic_symbols("/bin/ls").undefined
    assert dynamic_symbols("/etc/passwd") is None


def test_importing_shim_elf_does_not_import_pyelftools() -> None:
    code = ("import sys, shim.elf.facts, shim.elf.cache, shim.elf.loader, shim.elf.ldcache, shim.elf.isa;"
            "import shim.elf.facts as f; assert f.elf_facts('/etc/passwd') is None;"
            "print('elftools' in sys.modules)")
    out = subprocess.run([sys.executable, "-P", "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/").stdout
    assert out.strip() == "False"


# ---- the facts cache ----

class Counting:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: str) -> ElfFacts | None:
        self.calls.append(path)
        return elf_facts(path)


def test_cache_hit_miss_and_identity(built: Path, tmp_path: Path) -> None:
    cache_file = tmp_path / "c" / "elf-facts.json"
    lib = tmp_path / "libdep.so.1"
    shutil.copy(built / "dep/libdep.so.1", lib)
    link = tmp_path / "libdep.so"
    link.symlink_to("libdep.so.1")

    compute = Counting()
    c = FactsCache(str(cache_file), compute=compute)
    first = c.get(lib)
    assert first == elf_facts(lib) and compute.calls == [str(lib)]
    assert c.get("/etc/passwd") is None
    assert c.save() and cache_file.exists() and not c.dirty

    compute = Counting()
    warm = FactsCache(str(cache_file), compute=compute)
    assert warm.get(lib) == first
    via_link = warm.get(link)  # same real path, same identity: a hit, reported under the asked path
    assert via_link.path == str(link) and via_link.version_defs == first.version_defs
    assert warm.get("/etc/passwd") is None
    assert compute.calls == [] and not warm.dirty
    assert warm.save()  # nothing to write

    # A rewritten file has another identity (size, mtime): computed again.
    time.sleep(0.01)
    shutil.copy(built / "main/libmain.so.1", lib)
    assert warm.get(lib).soname == "libmain.so.1" and compute.calls == [str(lib)]
    assert warm.get(tmp_path / "missing") is None


def test_cache_tolerates_corrupt_and_unwritable(built: Path, tmp_path: Path) -> None:
    cache_file = tmp_path / "elf-facts.json"
    lib = built / "dep/libdep.so.1"
    junks = (b"\x00garbage{", b'{"format": 1, "files": []}', b"[1, 2]",
             b'{"format": 1, "files": {"/x": [1, 2, 3, 4, {"path": 5}]}}')
    for junk in junks:
        cache_file.write_bytes(junk)
        c = FactsCache(str(cache_file))
        assert c.get(lib) == elf_facts(lib)
        assert c.save()
        assert json.loads(cache_file.read_text())["format"] == 1
    # A damaged entry whose identity matches is recomputed, not trusted.
    doc = json.loads(cache_file.read_text())
    real = os.path.realpath(lib)
    doc["files"][real][4] = {"path": "x"}
    cache_file.write_text(json.dumps(doc))
    assert FactsCache(str(cache_file)).get(lib) == elf_facts(lib)

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    c = FactsCache(str(blocker / "elf-facts.json"))
    assert c.get(lib) is not None
    assert c.save() is False  # cannot create the directory: reported, not raised


def test_cache_default_location(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHIMRUN_CACHE", str(tmp_path / "sc"))
    assert FactsCache().path == str(tmp_path / "sc" / "elf-facts.json")
    monkeypatch.delenv("SHIMRUN_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert FactsCache().path == str(tmp_path / ".cache" / "shim" / "elf-facts.json")


def test_warm_lookup_does_not_import_pyelftools(tmp_path: Path) -> None:
    env = {**os.environ, "SHIMRUN_CACHE": str(tmp_path)}
    fill = f"from shim.elf.cache import FactsCache; c = FactsCache(); c.get({str(LIBC)!r}); assert c.save()"
    subprocess.run([sys.executable, "-P", "-c", fill], check=True, env=env, cwd="/")
    probe = (f"import sys, json; from shim.elf.cache import FactsCache; c = FactsCache(); f = c.get({str(LIBC)!r});"
             "print(json.dumps([f.soname, 'GLIBC_2.36' in f.version_defs, 'elftools' in sys.modules, c.dirty]))")
    out = subprocess.run([sys.executable, "-P", "-c", probe], check=True, capture_output=True, text=True,
                         env=env, cwd="/").stdout
    assert json.loads(out) == ["libc.so.6", True, False, False]


def _writer(cache_file: str, lib: str, barrier) -> None:
    try:
        c = FactsCache(cache_file)
        c.get(lib)
        barrier.wait(30)
        ok = c.save()
        os._exit(0 if ok else 2)
    except BaseException:
        os._exit(1)


def test_64_concurrent_writers(built: Path, tmp_path: Path) -> None:
    cache_file = tmp_path / "elf-facts.json"
    libs = []
    for i in range(64):
        p = tmp_path / f"lib{i}.so"
        shutil.copy(built / "dep/libdep.so.1", p)
        libs.append(str(p))
    ctx = multiprocessing.get_context("fork")  # children inherit the imported pyelftools: fast start
    barrier = ctx.Barrier(64)
    procs = [ctx.Process(target=_writer, args=(str(cache_file), lib, barrier)) for lib in libs]
    for p in procs:
        p.start()
    seen_versions = 0
    while any(p.is_alive() for p in procs):  # every read while they write must parse
        try:
            doc = json.loads(cache_file.read_bytes())
            seen_versions += 1
            assert doc["format"] == 1
        except FileNotFoundError:
            pass
    for p in procs:
        p.join()
        assert p.exitcode == 0
    doc = json.loads(cache_file.read_bytes())
    assert 1 <= len(doc["files"]) <= 64
    for real, entry in doc["files"].items():
        assert real in libs and ElfFacts.from_dict(entry[4]).soname == "libdep.so.1"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # no temporary files left
    warm = FactsCache(str(cache_file))
    assert all(warm.get(lib).soname == "libdep.so.1" for lib in libs)


@pytest.mark.parametrize("path", ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libmpich.so.12",
                                  "/bin/ls", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"])
def test_fast_dynsym_reader_agrees_with_pyelftools(path, monkeypatch):
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    fast = facts_mod.dynamic_symbols(path)
    monkeypatch.setattr(facts_mod, "_dynsym_from_sections", lambda p: None)  # force the pyelftools walk
    slow = facts_mod.dynamic_symbols(path)
    assert fast == slow and fast.defined | fast.undefined
