"""The image a launch names, opened once: every check and every read goes through this one
descriptor, from the site's judgement to the mount, never through the name again.

A second process that swaps the path (a rename, a symlink flipped between a signed and an unsigned
SIF, a directory exchanged for another) cannot make what was judged and what is mounted two
different files: the policy resolves where the image lies from the descriptor (/proc/self/fd),
verifies signatures on the bytes read through it, and the C executor mounts it from the same
descriptor (squashfuse reads /proc/self/fd/N; a directory is bound from it). The native
front-end opens the image the same way and hands its descriptor to the planner (SHIMRUN_IMAGE_FD)
when it has no record to run, so even then the path is opened once.

A regular file is opened for reading; a directory with O_PATH. Anything else (a FIFO, a socket, a
device) is refused from the O_PATH descriptor, without ever opening it for reading."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import BinaryIO

from shim.errors import ImageError
from shim.image.regular import not_an_image_file
from shim.record.format import HANDOVER_ENV, IMAGE_SOURCE
from shim.record.model import ImageFile

IMAGE_FD_ENV = HANDOVER_ENV["IMAGE_FD"]


@dataclass(frozen=True)
class OpenedImage:
    fd: int                 # O_RDONLY (a file) or O_PATH (a directory); close-on-exec
    given: str              # as the command line names it
    path: str               # where the descriptor's file lies (the kernel's resolution at open)
    st: os.stat_result      # fstat of the descriptor

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def via(self) -> str:
        """A path that reaches the opened file (or, below it, a directory's contents) through the
        descriptor, whatever happens to the name meanwhile."""
        return f"/proc/self/fd/{self.fd}"

    def reader(self) -> BinaryIO:
        """The opened file's bytes (an open file of its own, at offset 0)."""
        return open(self.via, "rb")  # noqa: SIM115 - the caller's to close (non-inheritable, as every open())

    def identity(self, source: int = IMAGE_SOURCE["OPENED"]) -> ImageFile:
        s = self.st
        if self.is_dir:  # its contents are inputs of their own; its times change with every entry
            return ImageFile(source, s.st_mode, s.st_dev, s.st_ino)
        return ImageFile(source, s.st_mode, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _resolved(fd: int, given: str) -> str:
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(given)
    # " (deleted)": unlinked since it was opened; still the very file that is judged and mounted
    return where if where.startswith("/") else os.path.realpath(given)


def _from_path_fd(fd: int, given: str) -> OpenedImage:
    """The image behind an O_PATH descriptor: kept as it is for a directory, reopened for reading
    through itself for a regular file (the O_PATH descriptor then closed), refused otherwise."""
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return OpenedImage(fd, given, _resolved(fd, given), st)
        if not stat.S_ISREG(st.st_mode):
            raise not_an_image_file(given, st.st_mode)
        try:
            data_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise ImageError(f"cannot read image {given}: {e.strerror}", "check its permissions") from None
        opened = OpenedImage(data_fd, given, _resolved(fd, given), os.fstat(data_fd))
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return opened


def open_image_file(given: str, handed_fd: int | None = None) -> OpenedImage:
    """The image `given` names, opened once; or the descriptor the native front-end opened it
    with and handed over (SHIMRUN_IMAGE_FD: a regular file for reading, or a directory, O_PATH)."""
    if handed_fd is not None:
        try:
            st = os.fstat(handed_fd)
        except OSError:
            st = None
        if st is not None and (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            os.set_inheritable(handed_fd, False)
            return OpenedImage(handed_fd, given, _resolved(handed_fd, given), st)
    try:
        fd = os.open(given, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError(f"image {given} does not exist", "check the path") from None
    except OSError as e:
        raise ImageError(f"cannot open image {given}: {e.strerror}", "check the path and its permissions") from None
    return _from_path_fd(fd, given)


def handed_fd(environ: MutableMapping[str, str]) -> int | None:
    """The image descriptor the front-end handed over (removed from `environ`: the app must not
    see it), if any."""
    text = environ.pop(IMAGE_FD_ENV, "")
    return int(text) if text.isdigit() else None


def others_can_write(opened: OpenedImage, uid: int) -> str:
    """Why someone besides `uid` and root could rewrite the opened file in place ("" when no one
    can): its owner, group or other write bits, or a POSIX ACL that grants write to a named user
    or group. A signature says nothing about bytes that can change after it was checked."""
    st = opened.st
    if st.st_uid not in (uid, 0):
        return f"it belongs to uid {st.st_uid}, who can rewrite it"
    acl = _acl_writers(opened)  # with an ACL, the group bits are its mask: name the entry first
    if acl:
        return acl
    if st.st_mode & stat.S_IWGRP:
        return f"its group (gid {st.st_gid}) may write it (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & stat.S_IWOTH:
        return f"everyone may write it (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


_ACL_USER, _ACL_GROUP, _ACL_MASK = 0x02, 0x08, 0x10
_ACL_WRITE = 0x02


def _acl_writers(opened: OpenedImage) -> str:
    """A named user or group of the file's access ACL with write (and the mask letting it)."""
    try:
        raw = os.getxattr(opened.via, "system.posix_acl_access")
    except OSError:
        return ""  # no ACL (or none this file system keeps): the mode bits say it all
    entries = [(int.from_bytes(raw[i:i + 2], "little"), int.from_bytes(raw[i + 2:i + 4], "little"),
                int.from_bytes(raw[i + 4:i + 8], "little")) for i in range(4, len(raw) - 7, 8)]
    mask = next((perm for tag, perm, _ in entries if tag == _ACL_MASK), 0x07)
    for tag, perm, who in entries:
        if tag in (_ACL_USER, _ACL_GROUP) and perm & mask & _ACL_WRITE:
            kind = "user" if tag == _ACL_USER else "group"
            return f"an ACL lets {kind} {who} write it"
    return ""
