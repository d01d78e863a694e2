"""The mount points an unpacked image gets (shim/launch/mountpoints.py), so that a launch, the
audit's included, needs no underlay of the image's "/": made in the tree, never through a
symlink of the image's (adversarial: `.shim` pointing out of the tree)."""

from __future__ import annotations

from pathlib import Path

from shim.launch.mountpoints import mount_points
from shim.record.format import AUDIT_DIR


def test_made_in_a_plain_tree(tmp_path: Path) -> None:
    mount_points(str(tmp_path))
    assert (tmp_path / "dev").is_dir() and (tmp_path / AUDIT_DIR.lstrip("/")).is_dir()
    mount_points(str(tmp_path))   # again: nothing to do, no error


def test_never_through_an_images_symlink(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / ".shim").symlink_to(outside)           # absolute: the host's path, were it followed
    (root / "dev").symlink_to("/nonexistent-dev")  # dangling
    mount_points(str(root))
    assert list(outside.iterdir()) == [] and not Path("/nonexistent-dev").exists()
    assert (root / ".shim").is_symlink() and (root / "dev").is_symlink()

