"""benchmarks/bench_io.py runs (issue #24 item 1): one quick round on the small debian-base image
writes a table with a row for every way (a serve mode the build lacks marked so) and a number for
every ratio; and the per-node counting of benchmarks/io_nodes.py reads strace's output right."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import io_nodes  # noqa: E402 (benchmarks/ on the path first)
import io_ways  # noqa: E402

RATIO = re.compile(r"^\d+\.\d\d×$")


@pytest.mark.skipif(os.getuid() != 0, reason="dropping the page cache and the kernel's loop mount need root")
def test_quick_run_has_every_row_and_numeric_ratios(shim, user, tmp_path):
    env = {**os.environ, "SHIMRUN": shim.shimrun, "SHIM_TEST_USER": user.name}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_io.py"), "--quick", "--image", "base",
                        "--workloads", "import,small", "--results-dir", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    text = (tmp_path / "io.md").read_text()
    for section in ("## Summary", "## The first launch's unpack", "## Targets", "## Notes"):
        assert section in text
    assert "load average" in text
    for table in text.split("\n## ")[2:4]:  # the two workloads' tables
        rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
        for way in ("shimrun --serve mount IMG.sif", "shimrun --serve unpack IMG.sif", "shimrun --serve kept IMG.sif",
                    "shimrun DIR", "ch-run IMG.sqfs", io_ways.KERNEL):
            assert way in rows, (way, table)
            cells = [c.strip() for c in rows[way].strip("|").split("|")]
            if "not available in this build" in cells[1]:
                assert way.startswith("shimrun --serve") and way != "shimrun --serve mount IMG.sif", rows[way]
                continue
            assert "differs" not in cells[1], rows[way]
            assert RATIO.match(cells[4]) and RATIO.match(cells[7]), rows[way]   # cold and warm ratios
        assert [c.strip() for c in rows[io_ways.KERNEL].strip("|").split("|")][4] == "1.00×"
    assert not list(Path("/tmp").glob("shim-bench-io-kernel.*")), "the kernel's mount point was left behind"


STRACE = """\
101 openat(AT_FDCWD, "/img/a.sif", O_RDONLY|O_CLOEXEC) = 3</img/a.sif>
101 newfstatat(AT_FDCWD, "/img/a.sif", {...}, 0) = 0
101 fstat(3</img/a.sif>, {...}) = 0
102 pread64(3</img/a.sif>, ""..., 4096, 0 <unfinished ...>
103 read(5</dev/fuse>, ""..., 135168) = 80
102 <... pread64 resumed>) = 4096
102 pread64(3</img/a.sif>, ""..., 65536, 4096) = 1000
102 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 3</img/a.sif>, 0) = 0x7f0000000000
104 openat(AT_FDCWD, "/img/other.sif", O_RDONLY) = 4</img/other.sif>
104 openat(AT_FDCWD, "/img/a.sif.bak", O_RDONLY) = -1 ENOENT (No such file or directory)
104 statx(AT_FDCWD, "/img/a.sif", AT_STATX_SYNC_AS_STAT, STATX_ALL, {...}) = 0
"""


def test_per_node_counts_only_the_image_file():
    c = io_nodes.count(STRACE, "/img/a.sif")
    assert c == io_nodes.Counts(opens=1, stats=3, reads=2, bytes=5096, maps=1, back=0)
    again = STRACE + "102 pread64(3</img/a.sif>, \"\"..., 512, 100) = 512\n"
    assert io_nodes.count(again, "/img/a.sif").back == 1   # read again from before where it had got to


def test_root_kind_of_a_container():
    fuse = "1 0 0:50 / / ro,nosuid,nodev - fuse.squashfuse_ll squashfuse_ll ro\n"
    bound = "30 1 254:0 /var/cache/x/rootfs / ro,nosuid - ext4 /dev/vda rw\n"
    assert io_ways.root_kind(fuse) == "fuse"
    assert io_ways.root_kind(bound) == "dir ext4"
    assert io_ways.root_kind(fuse + bound) == "dir ext4"  # the last mount at "/" is what the app sees
