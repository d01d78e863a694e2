"""An OCI layout or archive that holds one image for several platforms is one image (issue 20,
item 5): `shimrun build` takes this node's platform (or --arch's), whether index.json lists the
per-platform manifests itself (hand-written here, as `docker buildx` writes them) or through a
nested index (as `skopeo copy --all` writes it, from the suite's registry); when none matches,
one line names the platforms there are (exit 66), as a registry pull does."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import hostile
import oci
import pytest
from error_line import error_line_after_steps
from oci_checks import leftovers

from shim.errors import ExitCode

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="registries and users are set up as root")


def _image(arch: str, variant: str = "", note: str = "") -> hostile.Image:
    """busybox and a file naming the platform (busybox itself is this host's: only amd64 runs)."""
    tar = hostile.busybox_tar([hostile.entry("platform.txt", f"{arch}{variant}{note}\n".encode())])
    image = hostile.Image.make([tar])
    doc = json.loads(image.config.data)
    doc.update({"architecture": arch, **({"variant": variant} if variant else {})})
    image.config = hostile.Blob(json.dumps(doc).encode(), hostile.MT_CONFIG)
    return image


def _flat_layout(dest: Path, platforms: list[tuple[str, str]], tag: str = "") -> Path:
    """index.json listing one manifest per platform (each with the same tag, or none)."""
    images = [_image(a, v) for a, v in platforms]
    entries = []
    for image, (arch, variant) in zip(images, platforms, strict=True):
        entry = hostile.platform_entry(image, arch, variant)
        if tag:
            entry["annotations"] = {hostile.REF_NAME: tag}
        entries.append(entry)
    return hostile.write_layout(dest, images, entries)


def _build(shim, user_dir: Path, source: str, *opts: str):
    return shim.run(["build", *opts, user_dir / "out.sif", source], cwd=user_dir,
                    env={"SHIMRUN_CACHE": str(user_dir / "cache")}, timeout=300)


def _platform_of(shim, user_dir: Path) -> str:
    r = shim.run([user_dir / "out.sif", "/bin/sh", "-c", "cat /platform.txt"], cwd=user_dir,
                 env={"SHIMRUN_CACHE": str(user_dir / "cache")})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.parametrize("tag", ["", "1"])
def test_a_layout_listing_each_platform_is_one_image(shim, user_dir, tag):
    layout = _flat_layout(user_dir / "layout", [("arm64", "v8"), ("amd64", ""), ("s390x", "")], tag)
    source = f"oci:{layout}" + (f":{tag}" if tag else "")
    r = _build(shim, user_dir, source)
    assert r.returncode == 0, r.stderr
    assert _platform_of(shim, user_dir) == "amd64"
    arm = _build(shim, user_dir, source, "--arch", "arm64")
    assert arm.returncode == 0, arm.stderr
    info = json.loads(shim.run(["inspect", "--json", user_dir / "out.sif"]).stdout)
    assert "arm64" in json.dumps(info)
    assert leftovers(user_dir) == []


def test_a_layout_without_this_platform_names_those_it_has(shim, user_dir):
    layout = _flat_layout(user_dir / "layout", [("arm64", "v8"), ("s390x", ""), ("ppc64le", "")])
    r = _build(shim, user_dir, f"oci:{layout}")
    error_line_after_steps(r, ExitCode.ARCH, "linux/amd64", "linux/arm64/v8, linux/s390x, linux/ppc64le", "--arch")
    assert not (user_dir / "out.sif").exists() and leftovers(user_dir) == []


def test_two_different_images_still_need_a_tag(shim, user_dir):
    a, b = _image("amd64", note=" a"), _image("amd64", note=" b")
    layout = hostile.write_layout(user_dir / "layout", [a, b], [hostile.tagged(a, "a"), hostile.tagged(b, "b")])
    r = _build(shim, user_dir, f"oci:{layout}")
    error_line_after_steps(r, ExitCode.USAGE, "holds 2 images (a, b)", ":TAG")
    assert _build(shim, user_dir, f"oci:{layout}:b").returncode == 0
    assert _platform_of(shim, user_dir) == "amd64 b"


@pytest.mark.parametrize("tag", ["multi", "arm64-only"])
def test_an_archive_written_by_skopeo_copy_all(shim, registry, multi_layout, user_dir, tag):
    registry.push(multi_layout.with_tag(tag), f"sci/multi:{tag}")
    archive = user_dir / f"{tag}.tar"
    oci.skopeo("copy", "-q", "--all", *registry.skopeo_args("src"), f"docker://{registry.host}/sci/multi:{tag}",
               f"oci-archive:{archive}")
    archive.chmod(0o644)
    with tarfile.open(archive) as tf:
        index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["mediaType"] == hostile.MT_INDEX  # one entry: the nested index
    r = _build(shim, user_dir, f"oci-archive:{archive}")
    if tag == "multi":
        assert r.returncode == 0, r.stderr
        run = shim.run(["run", user_dir / "out.sif"], cwd=user_dir, env={"SHIMRUN_CACHE": str(user_dir / "cache")})
        assert "entry args: default-arg" in run.stdout, run.stderr
    else:
        error_line_after_steps(r, ExitCode.ARCH, "linux/amd64", "it has: linux/arm64/v8", "--arch")
    assert leftovers(user_dir) == []
