"""A short run of the kill-at-random stress (scripts/kill_stress.py; its long run, 200+ kills, writes
benchmarks/results/kill_stress.md): a few SIGKILLs of each of shim's processes at random moments
leave no process, mount, socket, staging entry or partial extraction, and the next launch works;
a kept mount's holder, its squashfuse and its launches are among the targets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import GOLDEN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import kill_stress  # noqa: E402


@pytest.mark.skipif(os.getuid() != 0, reason="the stress runs the launches as another user")
def test_random_kills_leave_nothing_behind(user) -> None:
    tally = kill_stress.stress(len(kill_stress.TARGETS) * 2, GOLDEN / "apptainer" / "busybox_amd64.sif", user.name,
                               seed=20261202)
    assert sum(tally.kills.values()) == len(kill_stress.TARGETS) * 2
    assert dict(tally.leftovers) == {} and tally.next_launch_failed == 0, kill_stress.report(tally, 0, 0)
