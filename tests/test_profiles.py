"""Injection profiles: loading, lint problems (one line naming file, key and fix), selection, the
`shimrun profiles` subcommand, and the shipped examples. Real files, with a fake host root."""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import tomllib
from pathlib import Path

import pytest
from library_images import X86_64_LIBC6

from shim.cli import profiles_cmd
from shim.elf.ldcache import CacheEntry
from shim.elf.ldcache_write import write_ld_cache
from shim.errors import ExitCode, ShimError, UsageError
from shim.plan.profiles import lint_files, load_profiles
from shim.plan.selection import select_profiles
from shim.site.config import BUNDLED_CONF_DIR, ConfigError
from shim.site.profile_model import Problem, ProfileSet

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "conf" / "profiles" / "examples").glob("*.toml"))

MPICH = """
[profile]
description = "host MPICH"
kind = "mpi"
abi = "mpich"
applies = "when-used"
replaces = ["libmpi.so.12", "libmpicxx.so.12"]

[provides]
prefix = "/opt/mpich"
libraries = ["lib/libmpi.so.12*", "lib/libmpicxx.so.12", "soname:libfabric.so.1"]
plugin_dirs = ["lib/plugins"]
binaries = ["bin/mpichversion"]
config_files = ["/etc/mpich.conf"]
devices = ["/dev/infiniband/*"]
binds = ["/var/spool/job:/job:ro"]

[env]
set = { FI_PROVIDER = "verbs" }
prepend = { PATH = "/opt/mpich/bin" }
unset = ["MPICH_INTERFACE_HOSTNAME"]
"""

MPICH_FILES = ["opt/mpich/lib/libmpi.so.12", "opt/mpich/lib/libmpi.so.12.1.1", "opt/mpich/lib/libmpicxx.so.12"]


def elf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    return path




def host_cache(root: Path, sonames: dict[str, str]) -> None:
    """The fake host's /etc/ld.so.cache: SONAME -> path, each path a (minimal) ELF file."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for path in sonames.values():
        elf(root / path.lstrip("/"))
    entries = [CacheEntry(X86_64_LIBC6, k, v) for k, v in sonames.items()]
    (root / "etc/ld.so.cache").write_bytes(write_ld_cache(entries))


def make_host(root: Path, libraries: list[str] = MPICH_FILES) -> Path:
    for lib in libraries:
        elf(root / lib)
    host_cache(root, {"libfabric.so.1": "/usr/lib/x86_64-linux-gnu/libfabric.so.1.18.2"})
    (root / "opt/mpich/lib/plugins").mkdir(parents=True, exist_ok=True)
    exe = root / "opt/mpich/bin/mpichversion"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/mpich.conf").write_text("")
    (root / "dev/infiniband").mkdir(parents=True, exist_ok=True)
    (root / "dev/infiniband/uverbs0").write_text("")
    (root / "var/spool/job").mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    d = tmp_path / "conf"
    (d / "profiles").mkdir(parents=True)
    (d / "shim.toml").write_text("")
    return d


def write(conf: Path, name: str, text: str) -> Path:
    path = conf / "profiles" / f"{name}.toml"
    path.write_text(text)
    return path


def profile(kind: str = "other", applies: str = "always", extra: str = "", provides: str = "") -> str:
    return f'[profile]\nkind = "{kind}"\napplies = "{applies}"\n{extra}\n[provides]\n{provides}\n'


def mpi(applies: str, lib: str = "/opt/mpich/lib/libmpi.so.12", extra: str = "") -> str:
    return profile("mpi", applies, f'abi = "mpich"\nreplaces = ["libmpi.so.12"]\n{extra}', f'libraries = ["{lib}"]')


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# ------------------------------------------------------------------------------------------ loading

def test_valid_profile_loads(conf: Path, host: Path) -> None:
    path = write(conf, "mpich", MPICH)
    ps = load_profiles(conf, host_root=str(host))
    assert ps.names() == ["mpich"]                       # the file stem
    p = ps.profiles[0]
    assert (p.file, p.kind, p.abi, p.applies, p.description) == (str(path), "mpi", "mpich", "when-used", "host MPICH")
    assert p.replaces == ("libmpi.so.12", "libmpicxx.so.12")
    assert p.available and p.why_unavailable() == ""
    libs = p.provides.libraries
    assert libs[0].path == "/opt/mpich/lib/libmpi.so.12*" and libs[0].is_glob
    assert libs[0].matches == ("/opt/mpich/lib/libmpi.so.12", "/opt/mpich/lib/libmpi.so.12.1.1")
    assert libs[1].matches == ("/opt/mpich/lib/libmpicxx.so.12",)
    # soname: entries are found through the host's ld.so.cache, as its ld.so would find them.
    assert (libs[2].soname, libs[2].key) == ("libfabric.so.1", "provides.libraries[2]")
    assert libs[2].matches == ("/usr/lib/x86_64-linux-gnu/libfabric.so.1.18.2",)
    assert p.provides.plugin_dirs[0].matches == ("/opt/mpich/lib/plugins",)
    assert p.provides.binaries[0].path == "/opt/mpich/bin/mpichversion"
    assert p.provides.devices[0].matches == ("/dev/infiniband/uverbs0",)
    bind = p.provides.binds[0]
    assert (bind.src, bind.dst, bind.read_only) == ("/var/spool/job", "/job", True)
    assert dict(p.env.set) == {"FI_PROVIDER": "verbs"} and dict(p.env.prepend) == {"PATH": "/opt/mpich/bin"}
    assert p.env.unset == ("MPICH_INTERFACE_HOSTNAME",)
    assert lint_files([path], host_root=str(host)) == []
    json.dumps(p.to_dict())                              # --json must be able to print it


def test_bundled_conf_has_no_profiles() -> None:
    # This machine has none of the hardware the examples need: nothing is enabled by default.
    assert load_profiles(BUNDLED_CONF_DIR).profiles == ()


def test_examples_are_not_loaded(conf: Path, host: Path) -> None:
    (conf / "profiles" / "examples").mkdir()
    (conf / "profiles" / "examples" / "x.toml").write_text("not toml [")
    assert load_profiles(conf, host_root=str(host)).profiles == ()


# ------------------------------------------------------------------------------------------ problems

def test_unknown_key_names_file_key_and_suggestion(conf: Path, host: Path) -> None:
    path = write(conf, "mpich", MPICH.replace("libraries =", "librarys ="))
    problems = lint_files([path], host_root=str(host))
    p = next(p for p in problems if p.key == "provides.librarys")
    assert str(p) == f"{path}: provides.librarys: unknown key (did you mean provides.libraries?)"
    with pytest.raises(ConfigError) as e:
        load_profiles(conf, host_root=str(host))
    assert e.value.code == ExitCode.CONFIG
    assert str(e.value).startswith(f"{path}: provides.librarys: unknown key (did you mean provides.libraries?")


def test_unknown_table_and_key_in_wrong_table(conf: Path, host: Path) -> None:
    path = write(conf, "x", profile(extra='libraries = ["/a"]') + "[enviroment]\nA = 1\n")
    problems = lint_files([path], host_root=str(host))
    keys = {p.key: p for p in problems}
    assert keys["enviroment"].fix == "did you mean [env]?"
    assert keys["profile.libraries"].fix == "move it to [provides]"
    path.write_text(profile() + '[env]\nFI_PROVIDER = "cxi"\n')
    assert only(lint_files([path], host_root=str(host))).fix == 'write set = { FI_PROVIDER = "..." } under [env]'


def test_wrong_type(conf: Path, host: Path) -> None:
    path = write(conf, "mpich", MPICH.replace('replaces = ["libmpi.so.12", "libmpicxx.so.12"]',
                                              'replaces = "libmpi.so.12"'))
    p = next(p for p in lint_files([path], host_root=str(host)) if p.key == "profile.replaces")
    assert str(p) == (f'{path}: profile.replaces: must be an array of strings, not a string '
                      f'(write it as replaces = ["libmpi.so.12"])')
    path.write_text(MPICH.replace('FI_PROVIDER = "verbs"', "FI_PROVIDER = 3"))
    assert only(lint_files([path], host_root=str(host))).key == "env.set.FI_PROVIDER"


def test_missing_host_file_is_a_lint_error_but_only_unavailable_at_load(conf: Path, tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", libraries=["opt/mpich/lib/libmpi.so.12"])   # no libmpicxx
    path = write(conf, "mpich", MPICH)
    p = only(lint_files([path], host_root=str(root)))
    assert p.host and p.key == "provides.libraries[1]"
    assert str(p) == (f"{path}: provides.libraries[1]: /opt/mpich/lib/libmpicxx.so.12 does not exist on this host "
                      "(install it, or fix the path)")
    ps = load_profiles(conf, host_root=str(root))
    mp = ps.profiles[0]
    assert not mp.available
    assert mp.why_unavailable() == "provides.libraries[1]: /opt/mpich/lib/libmpicxx.so.12 does not exist on this host"
    sel = select_profiles(ps, [], False, {"libmpi.so.12"})
    assert sel[0].applies is False and sel[0].why.startswith("unavailable on this host: provides.libraries[1]")
    with pytest.raises(ShimError) as e:                  # by name it is an error
        select_profiles(ps, ["mpich"], False, set())
    assert e.value.code == ExitCode.HOST and "unavailable on this host" in str(e.value)


def test_glob_matching_nothing_and_wrong_sorts(conf: Path, host: Path) -> None:
    path = write(conf, "x", profile(provides='prefix = "/opt/mpich"\nlibraries = ["lib/libnope*", "lib/plugins"]\n'
                                             'plugin_dirs = ["bin/mpichversion"]\ndevices = ["/etc/mpich.conf"]'))
    problems = {p.key: p for p in lint_files([path], host_root=str(host))}
    assert problems["provides.libraries[0]"].message == "/opt/mpich/lib/libnope* matches nothing on this host"
    assert "plugin_dirs" in problems["provides.libraries[1]"].fix
    assert problems["provides.plugin_dirs[0]"].message == "/opt/mpich/bin/mpichversion is not a directory"
    assert problems["provides.devices[0]"].message == "/etc/mpich.conf is not under /dev"


def test_library_must_be_elf(conf: Path, host: Path) -> None:
    (host / "opt/mpich/lib/libfoo.so").write_text("INPUT ( libfoo.so.1 )\n")
    path = write(conf, "x", profile(provides='libraries = ["/opt/mpich/lib/libfoo.so"]'))
    assert "not an ELF file" in only(lint_files([path], host_root=str(host))).message


def test_bad_applies_and_kind(conf: Path, host: Path) -> None:
    path = write(conf, "x", profile(kind="mpii", applies="when_used"))
    problems = {p.key: p for p in lint_files([path], host_root=str(host))}
    assert str(problems["profile.applies"]) == (
        f"{path}: profile.applies: 'when_used' is not a known value "
        '(did you mean "when-used"? use one of: always, when-used, on-request)')
    assert problems["profile.kind"].message == "'mpii' is not a known value"
    path.write_text('[profile]\nkind = "other"\n')
    assert only(lint_files([path], host_root=str(host))).key == "profile.applies"     # required
    path.write_text(profile(applies="when-used"))
    assert "profile.replaces is empty" in only(lint_files([path], host_root=str(host))).message


def test_mpi_needs_matching_abi(conf: Path, host: Path) -> None:
    path = write(conf, "x", mpi("always").replace('abi = "mpich"', 'abi = "openmpi"'))
    p = only(lint_files([path], host_root=str(host)))
    assert (p.key, p.fix) == ("profile.replaces[0]", 'set abi = "mpich", or remove libmpi.so.12 from replaces')
    path.write_text(mpi("always").replace('abi = "mpich"', ""))
    assert only(lint_files([path], host_root=str(host))).key == "profile.abi"


def test_replaced_soname_must_be_provided(conf: Path, host: Path) -> None:
    path = write(conf, "x", mpi("always", lib="/opt/mpich/lib/libmpicxx.so.12"))
    p = only(lint_files([path], host_root=str(host)))
    assert p.key == "profile.replaces[0]" and "libmpi.so.12" in p.message


def test_soname_entry_missing_from_host_cache_makes_profile_unavailable(conf: Path, host: Path) -> None:
    libs = 'libraries = ["soname:libfabric.so.1", "soname:libpsm3.so.1"]'
    path = write(conf, "fab", profile("fabric", provides=libs))
    p = only(lint_files([path], host_root=str(host)))
    assert p.key == "provides.libraries[1]" and "libpsm3.so.1 is not in this host's ld.so cache" in p.message
    (fab,) = load_profiles(conf, host_root=str(host)).profiles
    assert not fab.available and "libpsm3.so.1" in fab.why_unavailable()


def test_toml_syntax_error_names_line(conf: Path, host: Path) -> None:
    path = write(conf, "x", '[profile]\nkind = "mpi\n')
    p = only(lint_files([path], host_root=str(host)))
    assert p.key == "line 2" and p.fix == "fix the TOML syntax"


def test_duplicate_names(conf: Path, host: Path) -> None:
    a = write(conf, "a", profile(extra='name = "same"'))
    b = write(conf, "b", profile(extra='name = "same"'))
    p = only(lint_files([a, b], host_root=str(host)))
    assert str(p) == (f"{b}: profile.name: name 'same' is also used by {a} "
                      "(give each profile a unique name (the file name is the default))")
    with pytest.raises(ConfigError, match="also used by"):
        load_profiles(conf, host_root=str(host))


def test_conflicting_mpi_profiles(conf: Path, host: Path) -> None:
    a = write(conf, "a", mpi("when-used"))
    b = write(conf, "b", mpi("always", lib="/opt/mpich/lib/libmpi.so.12.1.1"))
    p = only(lint_files([a, b], host_root=str(host)))
    assert p.file == str(b) and p.key == "profile.applies"
    assert "both are MPI profiles replacing libmpi.so.12" in p.message and "on-request" in p.fix
    with pytest.raises(ConfigError, match="conflicts with 'a'"):
        load_profiles(conf, host_root=str(host))
    b.write_text(mpi("on-request", lib="/opt/mpich/lib/libmpi.so.12.1.1"))   # the fix: one of them on request
    ps = load_profiles(conf, host_root=str(host))
    sel = {s.profile.name: s for s in select_profiles(ps, ["b"], False, {"libmpi.so.12"})}
    assert sel["b"].applies and not sel["a"].applies
    assert sel["a"].why.startswith("displaced by requested profile 'b'")


def test_conflict_with_unavailable_profile_is_not_an_error_at_load(conf: Path, host: Path) -> None:
    # One shared configuration for two node types: only one MPI is installed on each.
    write(conf, "a", mpi("when-used"))
    write(conf, "b", mpi("when-used", lib="/opt/other/libmpi.so.12"))
    ps = load_profiles(conf, host_root=str(host))
    assert [p.available for p in ps.profiles] == [True, False]
    assert [s.applies for s in select_profiles(ps, [], False, {"libmpi.so.12"})] == [True, False]


def test_explicit_conflicts(conf: Path, host: Path) -> None:
    a = write(conf, "ucx", profile("fabric", extra='conflicts = ["fabric"]'))
    b = write(conf, "fabric", profile("fabric", "on-request"))
    assert lint_files([a, b], host_root=str(host)) == []
    b.write_text(profile("fabric", "always"))
    assert "'ucx' lists 'fabric' in profile.conflicts" in only(lint_files([a, b], host_root=str(host))).message
    a.write_text(profile("fabric", "on-request", 'conflicts = ["fabric"]'))
    b.write_text(profile("fabric", "on-request"))
    with pytest.raises(ConfigError, match="requested profiles 'fabric' and 'ucx' conflict"):
        select_profiles(load_profiles(conf, host_root=str(host)), ["fabric", "ucx"], False, set())


def test_glibc_is_never_injected(conf: Path, host: Path) -> None:
    elf(host / "lib64/libc.so.6")
    elf(host / "lib64/ld-linux-x86-64.so.2")
    elf(host / "lib64/libpthread-2.31.so")
    path = write(conf, "x", profile(provides='libraries = ["/lib64/libc.so.6", "/lib64/ld-linux*", '
                                             '"/lib64/libpthread-2.31.so", "soname:libm.so.6"]'))
    problems = lint_files([path], host_root=str(host))
    assert [p.key for p in problems] == [f"provides.libraries[{i}]" for i in range(4)]
    assert problems[0].message == "libc.so.6 is part of glibc"
    assert problems[1].message == "/lib64/ld-linux* matches ld-linux-x86-64.so.2, which is part of glibc"
    assert all("the image keeps its own C library" in p.fix for p in problems)
    # The opt-in that could never work on an older image is gone, with a line saying so.
    path.write_text(profile(extra="glibc_replacement = true"))
    (removed,) = [p for p in lint_files([path], host_root=str(host)) if p.key == "profile.glibc_replacement"]
    assert "not supported" in removed.message and not removed.host
    path.write_text(profile(extra='replaces = ["libc.so.6"]'))
    assert only(lint_files([path], host_root=str(host))).key == "profile.replaces[0]"


def test_prefix_variable_expansion(conf: Path, host: Path) -> None:
    path = write(conf, "mpich", MPICH.replace('prefix = "/opt/mpich"', 'prefix = "${MPICH_HOME}/"'))
    ps = load_profiles(conf, host_root=str(host), environ={"MPICH_HOME": "/opt/mpich"})
    p = ps.profiles[0]
    assert p.available and p.provides.prefix == "/opt/mpich"
    assert p.provides.libraries[1].path == "/opt/mpich/lib/libmpicxx.so.12"
    problem = only(lint_files([path], host_root=str(host), environ={}))
    assert str(problem) == (f"{path}: provides.prefix: ${{MPICH_HOME}} is not set in the environment "
                            "(set MPICH_HOME (e.g. load its module) or write the path literally)")
    unset = load_profiles(conf, host_root=str(host), environ={}).profiles[0]
    assert not unset.available and "MPICH_HOME" in unset.why_unavailable()


def test_dollar_outside_prefix_is_an_error(conf: Path, host: Path) -> None:
    path = write(conf, "x", profile(provides='prefix = "$HOME/x"\nlibraries = ["${X}/lib/libfoo.so.1"]'))
    problems = {p.key: p for p in lint_files([path], host_root=str(host))}
    assert not problems["provides.prefix"].host and "${NAME}" in problems["provides.prefix"].fix
    assert "only in provides.prefix" in problems["provides.libraries[0]"].message
    path.write_text(profile() + '[env]\nset = { A = "${HOME}/x" }\n')
    assert only(lint_files([path], host_root=str(host))).key == "env.set.A"


def test_paths_and_binds_and_env_checks(conf: Path, host: Path) -> None:
    path = write(conf, "x", profile(provides='libraries = ["lib/libfoo.so.1"]\nbinds = ["/a:b:rx", "rel"]')
                 + '[env]\nset = { "1X" = "a", B = "b" }\nunset = ["B"]\n')
    problems = {p.key: p for p in lint_files([path], host_root=str(host))}
    assert set(problems) == {"provides.libraries[0]", "provides.binds[0]", "provides.binds[1]", "env.set.1X",
                             "env.set.B"}
    assert "no provides.prefix" in problems["provides.libraries[0]"].message


def test_every_problem_is_one_line(conf: Path, host: Path) -> None:
    path = write(conf, "x", "[profile]\nname = 3\nkind = []\nreplaces = [1, 'x']\n[provides]\nprefix = 'rel'\n"
                            "[env]\nprepend = 5\n")
    problems = lint_files([path, conf / "profiles" / "missing.toml"], host_root=str(host))
    assert len(problems) >= 6
    for p in problems:
        line = str(p)
        assert "\n" not in line and re.match(r"^\S+: \S+: .+ \(.+\)$", line), line


# ------------------------------------------------------------------------------------------ select

def test_select_rules(conf: Path, host: Path) -> None:
    write(conf, "always", profile("other", "always"))
    write(conf, "mpich", mpi("when-used"))
    write(conf, "gpu", profile("gpu", "on-request"))
    ps = load_profiles(conf, host_root=str(host))

    def run(requested: list[str], no_profiles: bool, sonames: set[str]) -> dict[str, tuple[bool, str]]:
        return {s.profile.name: (s.applies, s.why) for s in select_profiles(ps, requested, no_profiles, sonames)}

    assert run([], False, {"libmpi.so.12", "libc.so.6"}) == {
        "always": (True, "applies always"),
        "gpu": (False, "applies on request only (--profile gpu)"),
        "mpich": (True, "image uses libmpi.so.12")}
    assert run([], False, set())["mpich"] == (False, "image uses none of libmpi.so.12, libmpich.so.12")
    # Debian's MPICH apps link libmpich.so.12: the ABI data makes it the same library.
    assert run([], False, {"libmpich.so.12"})["mpich"] == (True, "image uses libmpich.so.12")
    assert run(["gpu", "gpu"], False, set())["gpu"] == (True, "requested with --profile")
    off = run(["gpu"], True, {"libmpi.so.12"})
    assert off["gpu"][0] and not off["always"][0] and not off["mpich"][0]
    assert off["always"][1] == "--no-profiles: only profiles requested by name apply"
    with pytest.raises(ConfigError) as e:
        select_profiles(ps, ["cuda"], False, set())
    assert e.value.code == ExitCode.CONFIG
    assert str(e.value) == "unknown profile 'cuda' requested (known profiles: always, gpu, mpich)"
    with pytest.raises(ConfigError, match="no profiles are configured"):
        select_profiles(ProfileSet("/etc/shim/profiles"), ["cuda"], False, set())


# ------------------------------------------------------------------------------------------ CLI

def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shimrun")
    profiles_cmd.register(parser.add_subparsers(dest="subcommand", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_list(conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = make_host(tmp_path / "real")                  # a real host path: listing looks under /
    write(conf, "mpich", mpi("when-used", lib=str(real / "opt/mpich/lib/libmpi.so.12")))
    write(conf, "gone", profile("fabric", "on-request", provides='libraries = ["/nonexistent/libfoo.so.1"]'))
    assert cli(["profiles", "--conf", str(conf)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"profiles in {conf / 'profiles'}:"
    assert out[1].split() == ["NAME", "KIND", "APPLIES", "REPLACES", "ON", "THIS", "HOST"]
    assert out[2].split()[:4] == ["gone", "fabric", "on-request", "-"]
    assert "unavailable: provides.libraries[0]: /nonexistent/libfoo.so.1 does not exist on this host" in out[2]
    assert out[3].split() == ["mpich", "mpi", "when-used", "libmpi.so.12", "usable"]
    assert cli(["profiles", "--conf", str(conf), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(p["name"], p["usable"]) for p in data["profiles"]] == [("gone", False), ("mpich", True)]


def test_cli_list_empty(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["profiles", "--conf", str(conf)]) == 0
    assert capsys.readouterr().out.startswith(f"no profiles in {conf / 'profiles'}")


def test_cli_lint(conf: Path, host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(conf, "mpich", MPICH)
    bad = write(conf, "bad", profile(applies="sometimes"))
    assert cli(["profiles", "lint", str(good), "--host-root", str(host)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    assert cli(["profiles", "lint", str(good), str(bad), "--host-root", str(host)]) == ExitCode.CONFIG
    assert capsys.readouterr().out.splitlines() == [
        f"{bad}: profile.applies: 'sometimes' is not a known value (use one of: always, when-used, on-request)",
        f"{good}: ok"]
    # Without the fake host root, MPICH's files are missing on this machine.
    assert cli(["profiles", "lint", str(good)]) == ExitCode.CONFIG
    assert "does not exist on this host" in capsys.readouterr().out
    with pytest.raises(UsageError):
        cli(["profiles", "lint", str(good), "--host-root", str(host / "nope")])


# ------------------------------------------------------------------------------------------ examples

def example_environ(example: Path) -> dict[str, str]:
    """A value for each ${VAR} the example's prefix uses."""
    return {v: f"/opt/from-env/{v.lower()}" for v in re.findall(r"\$\{(\w+)\}", example.read_text())}


def host_path(example: Path, entry: str, environ: dict[str, str]) -> str:
    """The absolute host path (or glob) a [provides] entry names, as lint writes it in messages."""
    pv = tomllib.loads(example.read_text()).get("provides", {})
    prefix = re.sub(r"\$\{(\w+)\}", lambda m: environ[m.group(1)], pv.get("prefix", ""))
    return entry if entry.startswith("/") else posixpath.normpath(f"{prefix}/{entry}")


def materialize(example: Path, root: Path, environ: dict[str, str]) -> None:
    """Create, under root, every host file the example lists (a glob's * taken as empty)."""
    pv = tomllib.loads(example.read_text()).get("provides", {})

    def where(entry: str) -> Path:
        path = host_path(example, entry, environ).replace("*", "")
        assert "?" not in path and "[" not in path, "examples use only * globs"
        return root / (path + ("0" if path.endswith("/") else "")).lstrip("/")

    sonames = {}
    for entry in pv.get("libraries", []):
        if entry.startswith("soname:"):
            name = entry.removeprefix("soname:")
            sonames[name] = f"/usr/lib/x86_64-linux-gnu/{name}.0"
        else:
            elf(where(entry))
    host_cache(root, sonames)
    for entry in pv.get("plugin_dirs", []) + [b.split(":")[0] for b in pv.get("binds", [])]:
        where(entry).mkdir(parents=True, exist_ok=True)
    for entry in pv.get("binaries", []) + pv.get("config_files", []) + pv.get("devices", []):
        where(entry).parent.mkdir(parents=True, exist_ok=True)
        where(entry).write_text("")
        where(entry).chmod(0o755)


def test_there_are_examples() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"mpich", "cray-mpich", "intel-mpi", "mvapich", "openmpi", "libfabric", "ucx", "verbs",
            "cuda-driver"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_passes_lint(example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    environ = example_environ(example)
    materialize(example, tmp_path, environ)
    assert [str(p) for p in lint_files([example], host_root=str(tmp_path), environ=environ)] == []
    assert example.read_text().lstrip().startswith("#"), "examples explain themselves"
    if not environ:
        assert cli(["profiles", "lint", str(example), "--host-root", str(tmp_path)]) == 0
        assert capsys.readouterr().out == f"{example}: ok\n"


# Each example's [provides].libraries entries that name host paths (soname: entries are looked up
# in the ld.so cache instead): (example, index in the list, entry).
EXAMPLE_LIBRARIES = [(ex, i, entry) for ex in EXAMPLES
                     for i, entry in enumerate(tomllib.loads(ex.read_text()).get("provides", {}).get("libraries", []))
                     if not entry.startswith("soname:")]
BREAKAGES = ("missing", "directory", "dangling", "loop")


def break_file(path: Path, how: str) -> None:
    """Replace the host file at path by nothing, a directory, a dangling symlink or a symlink loop."""
    path.unlink()
    if how == "directory":
        path.mkdir()
    elif how == "dangling":
        path.symlink_to(path.name + ".gone")
    elif how == "loop":
        path.symlink_to(path.name)


def test_example_libraries_found() -> None:
    assert {ex.stem for ex, _i, _e in EXAMPLE_LIBRARIES} == {ex.stem for ex in EXAMPLES} - {"cuda-driver"}


@pytest.mark.parametrize("literal", [False, True], ids=["as-shipped", "literal"])
@pytest.mark.parametrize("how", BREAKAGES)
@pytest.mark.parametrize(("example", "index", "entry"), EXAMPLE_LIBRARIES,
                         ids=[f"{ex.stem}-{i}" for ex, i, _e in EXAMPLE_LIBRARIES])
def test_example_broken_host_library(example: Path, index: int, entry: str, how: str, literal: bool,
                                     tmp_path: Path) -> None:
    """One library of an example broken on an otherwise complete host: lint reports that entry, and
    only it, as a host problem. The examples name libraries with globs (lib/libmpi.so.12*); the
    literal variant lints a copy naming the file itself (lib/libmpi.so.12), which lint judges by
    the path's own kind of breakage."""
    environ = example_environ(example)
    root = tmp_path / "host"
    materialize(example, root, environ)
    linted = example
    if literal:
        assert entry.endswith("*") and "*" not in entry[:-1], "examples glob only the version suffix"
        linted = tmp_path / example.name
        text = example.read_text()
        assert text.count(f'"{entry}"') == 1
        linted.write_text(text.replace(f'"{entry}"', f'"{entry[:-1]}"'))
        entry = entry[:-1]
    path = host_path(example, entry, environ)
    break_file(root / path.replace("*", "").lstrip("/"), how)
    if literal:
        want = {"missing": f"{path} does not exist on this host",
                "directory": f"{path} is not a file",
                "dangling": f"{path} is a dangling symlink (to {posixpath.basename(path)}.gone, which does not exist)",
                "loop": f"{path} is a symlink loop (too many levels of symbolic links)"}[how]
    else:
        want = f"{path} matches nothing on this host" if how == "missing" else f"{path} matches 1 entries but no files"
    problems = lint_files([linted], host_root=str(root), environ=environ)
    assert [(p.file, p.key, p.message, p.host) for p in problems] == [
        (str(linted), f"provides.libraries[{index}]", want, True)]
