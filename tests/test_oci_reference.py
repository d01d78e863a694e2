"""Image source names as Apptainer and Docker spell them."""

from __future__ import annotations

import pytest

from shim.errors import UsageError
from shim.oci.reference import parse


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), [
    ("docker://debian", "docker.io", "library/debian", "latest", ""),
    ("docker:debian:12", "docker.io", "library/debian", "12", ""),
    ("docker://lab/app:1.0", "docker.io", "lab/app", "1.0", ""),
    ("docker://ghcr.io/lab/app", "ghcr.io", "lab/app", "latest", ""),
    ("docker://127.0.0.1:5000/sci/app:1", "127.0.0.1:5000", "sci/app", "1", ""),
    ("docker://localhost/app", "localhost", "app", "latest", ""),
    ("docker://quay.io/a/b/c@sha256:" + "a" * 64, "quay.io", "a/b/c", "", "sha256:" + "a" * 64),
])
def test_docker_names(text, registry, repository, tag, digest):
    s = parse(text)
    assert (s.transport, s.registry, s.repository, s.tag, s.digest) == ("docker", registry, repository, tag, digest)


def test_docker_hub_is_served_by_its_api_host():
    assert parse("docker://debian").api_host == "registry-1.docker.io"
    assert parse("docker://127.0.0.1:5000/x").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize(("text", "path", "tag", "digest"), [
    ("oci:layout", "layout", "", ""),
    ("oci:/data/layout:1", "/data/layout", "1", ""),
    ("oci:///data/layout:v2", "/data/layout", "v2", ""),
    ("oci:dir@sha256:" + "b" * 64, "dir", "", "sha256:" + "b" * 64),
    ("oci-archive:img.tar", "img.tar", "", ""),
    ("oci-archive:img.tar:latest", "img.tar", "latest", ""),
    ("docker-archive:save.tar", "save.tar", "", ""),
    ("docker-archive:a:b/save.tar", "a:b/save.tar", "", ""),
])
def test_file_sources(text, path, tag, digest):
    s = parse(text)
    assert (s.path, s.tag, s.digest) == (path, tag, digest)


@pytest.mark.parametrize(("text", "name"), [
    ("docker://debian:12", "debian_12.sif"),
    ("docker://ghcr.io/lab/app", "app_latest.sif"),
    ("docker://lab/app@sha256:" + "c" * 64, "app_cccccccccccc.sif"),
    ("oci-archive:/x/app.tar:1", "app_1.sif"),
])
def test_default_pull_names(text, name):
    assert parse(text).default_name == name


@pytest.mark.parametrize("bad", ["docker://UPPER", "docker://a:b c", "docker://a@sha256:12", "oci:", "http://x",
                                 "docker://a:" + "x" * 200, "docker://"])
def test_bad_sources_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse(bad)
