"""`shimrun cdi list [--json]`: the CDI devices this node's specs define, one qualified name a line
(as `nvidia-ctk cdi list` prints them); `shimrun cdi validate [FILE...]`: check spec files (by
default every spec of the spec directories, and that no two of one directory define one device)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from shim.errors import ExitCode, ShimError, one_line


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cdi", help="list the node's CDI devices, or validate CDI spec files",
                              description="CDI (Container Device Interface) specs: read from /etc/cdi, "
                                          "/var/run/cdi and the site's [cdi] dirs (later ones win).")
    p.add_argument("--conf", metavar="DIR", help="site configuration directory (default: SHIMRUN_CONF, /etc/shim)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=list_main)
    sub = p.add_subparsers(dest="cdi_action", metavar="{list,validate}")
    listing = sub.add_parser("list", help="the devices, one VENDOR/CLASS=NAME a line",
                             description="The CDI devices of the node's specs, as --device requests them.")
    listing.add_argument("--json", action="store_true", help="each device with its spec file, version and edits")
    validate = sub.add_parser("validate", help="check spec files",
                              description="Check CDI spec files: one line per file, ok or its first problem "
                                          "(file, device, key). Without FILE: every spec of the spec directories.")
    validate.add_argument("files", nargs="*", metavar="FILE", help="spec file (.json or .yaml)")
    for sp in (listing, validate):
        # SUPPRESS: the parent's values must survive the subparser's defaults.
        sp.add_argument("--conf", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    listing.set_defaults(func=list_main)
    validate.set_defaults(func=validate_main)


def _dirs(args: argparse.Namespace) -> tuple[str, ...]:
    from shim.cdi.registry import default_dirs
    from shim.site.config import load_site_config

    return default_dirs(load_site_config(getattr(args, "conf", None)).cdi_dirs)


def _host_root() -> str:
    return os.environ.get("SHIMRUN_HOST_ROOT", "")


def list_main(args: argparse.Namespace) -> int:
    from shim.cdi.registry import load_registry

    registry = load_registry(_dirs(args), _host_root())
    if getattr(args, "json", False):
        rows = [{"name": e.qualified, "kind": e.spec.kind, "device": e.device.name, "spec": e.spec.path,
                 "cdiVersion": e.spec.cdi_version,
                 "edits": _counts(e.spec.edits.merged(e.device.edits))} for e in registry.entries]
        print(json.dumps({"dirs": list(registry.dirs), "devices": rows}, indent=2))
        return 0
    if not registry.entries:
        print(f"shimrun: no CDI devices: no spec in {', '.join(registry.dirs)}", file=sys.stderr)
    for e in registry.entries:
        print(e.qualified)
    return 0


def _counts(edits: object) -> dict[str, int]:
    return {"env": len(edits.env), "deviceNodes": len(edits.device_nodes), "mounts": len(edits.mounts),
            "hooks": len(edits.hooks), "additionalGids": len(edits.additional_gids)}


def validate_main(args: argparse.Namespace) -> int:
    from shim.cdi.registry import load_registry
    from shim.cdi.spec import read_spec, spec_files

    bad = 0
    files = list(args.files)
    dirs: tuple[str, ...] = ()
    if not files:
        from shim.host.paths import on_host

        dirs = _dirs(args)
        for directory in dirs:
            try:
                files += spec_files(on_host(_host_root(), directory))
            except ShimError as e:
                print(f"shimrun: error: {one_line(str(e))}", file=sys.stderr)
                bad += 1
    for path in files:
        try:
            spec = read_spec(path)
        except ShimError as e:
            print(f"shimrun: error: {one_line(str(e))}", file=sys.stderr)
            bad += 1
            continue
        print(f"{path}: ok (cdiVersion {spec.cdi_version}, {spec.kind}, {len(spec.devices)} devices)")
    if dirs and not bad:
        load_registry(dirs, _host_root())   # across files: two defining one device (raises)
    if not files and not bad:
        print(f"shimrun: no CDI spec in {', '.join(dirs)}", file=sys.stderr)
    return int(ExitCode.CONFIG) if bad else 0
