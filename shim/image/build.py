"""Build a SIF from a root filesystem directory or tarball (e.g. from mmdebstrap).

    SOURCE dir  --mksquashfs-->           rootfs.sqfs --sif_write--> OUT.sif
    SOURCE tar  --[decompress |] mksquashfs -tar --^     (squashfs-tools with -tar)
    SOURCE tar  --tar -x--> temp dir --mksquashfs--^     (older squashfs-tools)

Feeding the tarball to `mksquashfs -tar` keeps ownership, device nodes and modes exactly as in
the archive, which extracting as an unprivileged user cannot. Temporary files go next to OUT
(node-local /tmp is often a small tmpfs) and are always removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import IO

from shim.errors import ExitCode, ShimError, UsageError
from shim.image import arch as archmod
from shim.image.sif_write import SifObject, write_sif

COMPRESSIONS = ("zstd", "lz4", "gzip", "xz")

# Leading bytes of compressed tarballs -> the command that decompresses one to stdout.
DECOMPRESSORS: tuple[tuple[bytes, tuple[str, ...], str], ...] = (
    (b"\x1f\x8b", ("gzip", "-dc"), "gzip"),
    (b"BZh", ("bzip2", "-dc"), "bzip2"),
    (b"\xfd7zXZ\x00", ("xz", "-dc"), "xz-utils"),
    (b"\x28\xb5\x2f\xfd", ("zstd", "-dcq"), "zstd"),
    (b"\x04\x22\x4d\x18", ("lz4", "-dc"), "lz4"),
)

# mksquashfs options for every build: all files owned by root (what the container sees in its
# user namespace), no xattrs (unprivileged unsquashfs fails on security.* ones), and "/" mode
# 0755 whatever the source says: -tar skips the archive's "./" entry and would make it 0777,
# and a 0700 temp or build directory as "/" would lock every non-root user out of the image.
MKSQUASHFS_BASE = ("-noappend", "-no-xattrs", "-all-root", "-root-mode", "0755")

# A pull promises bounded memory: mksquashfs otherwise sizes its caches at a quarter of RAM
# (~280 MB resident on a 24 GiB node for a 170 MB image); 64M measured no slower there.
MKSQUASHFS_STREAM_MEM = ("-mem", "64M")

Progress = Callable[[str], None]


@cache
def _mksquashfs_help(exe: str) -> str:
    proc = subprocess.run([exe, "-help"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False)
    return proc.stdout + proc.stderr


def mksquashfs_has_tar(exe: str) -> bool:
    """squashfs-tools >= 4.6 (and Debian 12's 4.5.1) read a tar stream with -tar."""
    return any(line.split()[:1] == ["-tar"] for line in _mksquashfs_help(exe).splitlines())


def _work_dir(out: str, out_dir: str) -> str:
    """The temporary build directory beside OUT; a directory the user cannot write is one line."""
    try:
        return tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.build.", dir=out_dir)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror} in {out_dir}",
                         "write the image into a directory of your own") from None


def _which(tool: str, package: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise ShimError(ExitCode.HOST, f"{tool} is not installed",
                        f"apt-get install {package} (or dnf install {package})")
    return exe


def _decompressor(path: str) -> list[str] | None:
    """The command that writes the tar inside a compressed tarball to stdout; None for a
    plain tar."""
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, cmd, package in DECOMPRESSORS:
        if head.startswith(magic):
            return [_which(cmd[0], package), *cmd[1:], path]
    return None


def _time_flags(deterministic: bool) -> list[str]:
    if not deterministic:
        return []
    # Reproducible builds pin every timestamp; SOURCE_DATE_EPOCH is the usual way to say to what.
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not epoch.isdigit() or int(epoch) >= 2**32:
        raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a Unix time squashfs can store",
                         "unset it or give seconds since 1970 below 2^32")
    return ["-mkfs-time", epoch, "-all-time", epoch]


def _mksquashfs_env(cmd: list[str]) -> dict[str, str]:
    """mksquashfs refuses SOURCE_DATE_EPOCH together with -mkfs-time/-all-time, the flags
    --deterministic passes (having read SOURCE_DATE_EPOCH itself, _time_flags): then it is not
    passed on. An ordinary build leaves it to mksquashfs."""
    if "-all-time" not in cmd:
        return dict(os.environ)
    return {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}


def build_sif(out: str | os.PathLike[str], source: str | os.PathLike[str],  # noqa: PLR0913
              compression: str = "zstd", deterministic: bool = False,
              progress: Progress | None = None, arch: str | None = None,
              objects: tuple[SifObject, ...] = ()) -> str:
    """Build OUT (a SIF) from SOURCE (a rootfs directory or tarball). Returns the image's
    architecture (Go name): `arch`, or else detected from the rootfs's binaries.

    progress: called with a short line before each stage (for a CLI to print).
    Raises UsageError for bad arguments, ShimError for a missing or failing tool.
    """
    out, source = os.fspath(out), os.fspath(source)
    say = progress or (lambda _msg: None)
    shown = progress is not None  # mksquashfs's own progress bar too, on a terminal
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}",
                         "use one of: " + ", ".join(COMPRESSIONS))
    if arch is not None:
        archmod.arch_to_sif_code(arch)  # UsageError listing the valid names
        arch = archmod.normalize_arch(arch)
    if not os.path.exists(source):
        raise UsageError(f"build source {source} does not exist",
                         "give a root filesystem directory or tarball")
    if not (os.path.isdir(source) or os.path.isfile(source)):
        raise UsageError(f"build source {source} is neither a directory nor a tarball")
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"cannot write {out}: directory {out_dir} does not exist")
    mksquashfs = _which("mksquashfs", "squashfs-tools")
    flags = [*MKSQUASHFS_BASE, "-comp", compression, *_time_flags(deterministic)]

    work = _work_dir(out, out_dir)
    try:
        sqfs = os.path.join(work, "rootfs.sqfs")
        if os.path.isdir(source):
            say(f"creating squashfs ({compression}) from {source}")
            _run_mksquashfs([mksquashfs, source, sqfs, *flags], source, shown)
            found = archmod.arch_of_rootfs(source)
        elif mksquashfs_has_tar(mksquashfs):
            say(f"creating squashfs ({compression}) from tarball {source}")
            cmd = [mksquashfs, "-", sqfs, "-tar", *flags]
            found = _squash_tar(cmd, source, shown)
        else:
            say(f"extracting {source}")
            rootfs = os.path.join(work, "rootfs")
            _extract(source, rootfs)
            say(f"creating squashfs ({compression})")
            _run_mksquashfs([mksquashfs, rootfs, sqfs, *flags], source, shown)
            found = archmod.arch_of_rootfs(rootfs)
        if arch and found and arch != found:
            say(f"warning: labelling the image {arch} as asked, but its binaries are {found}")
        arch = arch or found
        if arch is None:
            raise UsageError(f"cannot tell the architecture of {source}: none of "
                             f"{', '.join(archmod.ROOTFS_PROBES[:3])}, ... is an ELF executable",
                             "name it with --arch (e.g. --arch amd64)")
        say(f"writing {out} ({arch})")
        write_sif(out, sqfs, arch, objects=objects, deterministic=deterministic)
        return arch
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _mksquashfs_output(shown: bool) -> Iterator[tuple[list[str], int | IO[bytes], IO[bytes] | None]]:
    """(extra flags, where mksquashfs's stdout+stderr go, the log to quote on failure): its
    progress bar when a person watches stderr and progress is `shown`, a quiet log otherwise."""
    if shown and sys.stderr.isatty():
        yield ["-quiet"], sys.stderr.fileno(), None
        return
    with tempfile.TemporaryFile() as log:
        yield ["-quiet", "-no-progress"], log, log


def _failure(what: str, source: str, log: IO[bytes] | None, rc: int) -> ShimError:
    last = ""
    if log is not None:
        log.seek(0)
        lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines()]
        # Skip mksquashfs's notices about entries it ignores on purpose.
        lines = [ln for ln in lines if ln and "ignoring" not in ln]
        last = f": {lines[-1]}" if lines else ""
    return ShimError(ExitCode.IMAGE, f"{what} failed on {source} (exit status {rc}){last}",
                     "check that the source is a complete root filesystem you can read")


def _run_mksquashfs(cmd: list[str], source: str, shown: bool) -> None:
    with _mksquashfs_output(shown) as (extra, out, log):
        rc = subprocess.run([*cmd, *extra], stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, check=False, env=_mksquashfs_env(cmd)).returncode
        if rc != 0:
            raise _failure("mksquashfs", source, log, rc)


@dataclass
class _TarEntry:
    kind: str                 # "file", "link" (symlink), "hard" or "other"
    target: str = ""          # symlink / hard link target
    head: bytes = b""         # first bytes of a regular file (its ELF header, if any)


@dataclass
class _TarIndex:
    """What arch detection needs from an archive streamed past us: links and file heads."""

    entries: dict[str, _TarEntry] = field(default_factory=dict)

    def readlink(self, rel: str) -> str | None:
        e = self.entries.get(rel)
        return e.target if e and e.kind == "link" else None

    def head(self, rel: str) -> bytes:
        e = self.entries.get(rel)
        if e and e.kind == "hard":
            e = self.entries.get(_norm(e.target))
        return e.head if e and e.kind == "file" else b""


def _norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


class _Tee:
    """A read-only stream that copies everything read from `src` into `sink`, so one pass
    over a (decompressed) tarball both feeds mksquashfs and lets tarfile index it."""

    def __init__(self, src: IO[bytes], sink: IO[bytes]) -> None:
        self.src, self.sink = src, sink

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        if data:
            self.sink.write(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _index_tar(stream: _Tee) -> _TarIndex:
    index = _TarIndex()
    with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[call-overload]
        for m in tf:
            name = _norm(m.name)
            if m.issym():
                index.entries[name] = _TarEntry("link", m.linkname)
            elif m.islnk():
                index.entries[name] = _TarEntry("hard", m.linkname)
            elif m.isreg():
                f = tf.extractfile(m)
                index.entries[name] = _TarEntry("file", head=f.read(64) if f else b"")
            else:
                index.entries[name] = _TarEntry("other")
    stream.drain()  # the end-of-archive blocks tarfile does not read
    return index


def _squash_tar(cmd: list[str], source: str, shown: bool) -> str | None:
    """Stream SOURCE (decompressed if needed) into `mksquashfs -tar`, indexing it on the way
    for arch detection. Returns the detected arch."""
    decomp = _decompressor(source)
    index, tar_error = _TarIndex(), None
    procs: list[subprocess.Popen[bytes]] = []
    with (open(source, "rb") as raw, tempfile.TemporaryFile() as unzip_log,
          _mksquashfs_output(shown) as (extra, out, log)):
        try:
            unzip = None
            if decomp:
                unzip = subprocess.Popen(decomp, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=unzip_log)
                procs.append(unzip)
            src = unzip.stdout if unzip else raw
            mk = subprocess.Popen([*cmd, *extra], stdin=subprocess.PIPE, stdout=out,
                                  stderr=subprocess.STDOUT, env=_mksquashfs_env(cmd))
            procs.append(mk)
            try:
                index = _index_tar(_Tee(src, mk.stdin))
            except BrokenPipeError:
                pass  # mksquashfs stopped reading; its exit status says why
            except (tarfile.TarError, EOFError) as e:
                tar_error = e
            finally:
                _close_quietly(mk.stdin)
                if unzip:
                    _close_quietly(unzip.stdout)  # a blocked decompressor gets EPIPE, exits
            rc = mk.wait()
            unzip_rc = unzip.wait() if unzip else 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        # Report the first cause: a corrupt compressed stream, a bad tar, then mksquashfs.
        # (SIGPIPE only means we stopped reading because of one of the latter.)
        if unzip_rc not in (0, -signal.SIGPIPE):
            tool = os.path.basename(decomp[0]) if decomp else "decompression"
            raise _failure(tool, source, unzip_log, unzip_rc)
        if tar_error is not None:
            raise UsageError(f"{source}: cannot read it as a tar archive ({tar_error})",
                             "give a root filesystem directory or a (compressed) tarball")
        if rc != 0:
            raise _failure("mksquashfs -tar", source, log, rc)
    return archmod.arch_of_tree(index.readlink, index.head)


def _close_quietly(f: IO[bytes] | None) -> None:
    try:
        if f is not None:
            f.close()
    except BrokenPipeError:
        pass


def _extract(source: str, dest: str) -> None:
    """Unpack a tarball with GNU tar, keeping what an unprivileged user can (modes, links,
    times); as non-root, device nodes under dev/ are skipped (mknod is not allowed)."""
    tar = _which("tar", "tar")
    os.mkdir(dest, 0o755)
    cmd = [tar, "-x", "-f", source, "-C", dest, "--no-same-owner", "--delay-directory-restore",
           "--no-xattrs"]
    if os.geteuid() != 0:
        cmd += ["--anchored", "--exclude=./dev/*", "--exclude=dev/*"]
    with tempfile.TemporaryFile() as log:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            check=False).returncode
        if rc != 0:
            raise _failure("tar -x", source, log, rc)


@dataclass(frozen=True)
class StreamBuild:
    """A SIF made from a tar stream that a writer produces (an OCI image's flattened layers)."""

    what: str                                 # the source, for messages
    arch: str
    compression: str = "zstd"
    deterministic: bool = False
    objects: tuple[SifObject, ...] = ()       # stored before the partition
    progress: Progress | None = None


def build_sif_from_stream(out: str, write_tar: Callable[[IO[bytes]], None], spec: StreamBuild) -> None:
    """Pipe `write_tar`'s archive into `mksquashfs -tar` and wrap the result as OUT. Nothing of it is
    left behind on failure or interruption: the work directory beside OUT goes, and OUT appears
    only, whole, at the end."""
    say = spec.progress or (lambda _msg: None)
    if spec.compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {spec.compression!r}", "use one of: " + ", ".join(COMPRESSIONS))
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"cannot write {out}: directory {out_dir} does not exist")
    mksquashfs = _which("mksquashfs", "squashfs-tools")
    if not mksquashfs_has_tar(mksquashfs):
        raise ShimError(ExitCode.HOST, f"{mksquashfs} cannot read a tar stream (-tar)",
                        "install squashfs-tools 4.5.1 or newer")
    flags = [*MKSQUASHFS_BASE, *MKSQUASHFS_STREAM_MEM, "-comp", spec.compression,
             *_time_flags(spec.deterministic)]
    work = _work_dir(out, out_dir)
    mk: subprocess.Popen[bytes] | None = None
    try:
        sqfs = os.path.join(work, "rootfs.sqfs")
        say(f"creating squashfs ({spec.compression})")
        cmd = [mksquashfs, "-", sqfs, "-tar", *flags]
        with _mksquashfs_output(spec.progress is not None) as (extra, where, log):
            mk = subprocess.Popen([*cmd, *extra], stdin=subprocess.PIPE, stdout=where, stderr=subprocess.STDOUT,
                                  env=_mksquashfs_env(cmd))
            try:
                assert mk.stdin is not None
                write_tar(mk.stdin)
            except BrokenPipeError:
                pass  # mksquashfs stopped reading: its exit status says why
            finally:
                _close_quietly(mk.stdin)
            rc = mk.wait()
            if rc != 0:
                raise _failure("mksquashfs -tar", spec.what, log, rc)
        say(f"writing {out} ({spec.arch})")
        write_sif(out, sqfs, spec.arch, objects=spec.objects, deterministic=spec.deterministic)
    finally:
        if mk is not None and mk.poll() is None:
            mk.kill()
            mk.wait()
        shutil.rmtree(work, ignore_errors=True)
