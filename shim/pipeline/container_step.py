"""Step 4 of planning: the container as the command line asks for it — binds, the root file
system (mounted or extracted), identity, working directory, environment rules, the runscript —
as a record of everything but what the look at the image adds."""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from typing import NamedTuple

from shim import native
from shim.container.binds import parse_bind, parse_bind_list, plan_binds
from shim.container.contain import Isolation, dev_links, home_bind, isolation, parse_mount, read_env_file, system_binds
from shim.container.environment import EnvOptions, env_rules
from shim.container.identity import identity_appends
from shim.errors import UsageError
from shim.image.open import ImageRef
from shim.launch.kept import kept_idle
from shim.launch.rootfs import FUSE_DEVICE, Served, ServeRequest, serve_image
from shim.launch.serve import ServeDecision
from shim.options import LaunchOptions
from shim.pipeline.inputs import FUSE_DEVICE_CHECK, PRESENCE
from shim.pipeline.stage import STAGE_DIR
from shim.record.format import CHECK, IDENTITY, IMAGE_SOURCE, IMG
from shim.record.model import Image, Input, LaunchRecord, RecordBind
from shim.record.snapshot import file_input, glob_input
from shim.site.binds import BindSpecError, parse_bind_spec
from shim.site.config import SiteConfig


class ContainerRequest(NamedTuple):
    options: LaunchOptions
    cwd: str
    environ: Mapping[str, str]      # the job's environment as given (the environment rules read it)
    env: Mapping[str, str]          # the same, recording what planning reads (an input)
    site: SiteConfig
    dry_run: bool = False           # decide how the image is served, unpack nothing (check, --dry-run)


class Container(NamedTuple):
    record: LaunchRecord            # everything but what the look at the image adds (no key yet)
    env_options: EnvOptions         # for the environment rules again, with the plan's edits
    command: tuple[str, ...]        # the app as this launch runs it (`shimrun run`: the runscript's)
    inputs: tuple[Input, ...]
    said: tuple[str, ...]           # lines for the user's terminal now (the record keeps them as notices)
    served: ServeDecision           # how the image's files are served, and why


class Runscript(NamedTuple):
    words: tuple[tuple[str, ...], tuple[str, ...]] | None   # (fixed, default) words; None: not `run`
    workdir: str
    command: tuple[str, ...]


def _home(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME", "")
    if not home.startswith("/"):
        home = pwd.getpwuid(os.getuid()).pw_dir
    return os.path.normpath(home)


def _site_bind_sources(specs: tuple[str, ...], cwd: str) -> list[str]:
    """The sources of the site's binds, by the one bind grammar: an optional one missing now makes
    a later launch plan again when it appears. (A spec the grammar refuses stops the launch before
    this, unless --no-mount bind-paths leaves the site's binds out: then it shapes nothing.)"""
    out = []
    for spec in specs:
        try:
            out.append(parse_bind_spec(spec, cwd).src)
        except BindSpecError:
            continue
    return out


def _binds(req: ContainerRequest, home: str | None, iso: Isolation) -> tuple[list[RecordBind], list[Input]]:
    cwd, site, opts = req.cwd, req.site, req.options
    site_binds = [] if "bind-paths" in iso.no_mount else [
        b for b in (parse_bind(s, site.path, cwd, optional=True) for s in site.binds) if b]
    site_binds = [b for b in site_binds if b.dst not in iso.no_mount]
    given = ",".join([req.environ.get("SHIMRUN_BIND", ""), *opts.bind])
    user_binds = parse_bind_list(given, "--bind/SHIMRUN_BIND", cwd)
    user_binds += [parse_mount(spec) for spec in opts.mount]
    inputs = [file_input(src, PRESENCE) for src in _site_bind_sources(site.binds, cwd)]
    inputs += [file_input(b.src, PRESENCE) for b in user_binds]
    if iso.home is not None:
        inputs.append(file_input(iso.home[0], PRESENCE))
    bound_cwd = None if iso.contain or "cwd" in iso.no_mount else cwd
    hb = home_bind(iso, home) if home else None
    binds = [RecordBind(b.src, b.dst, b.flags) for b in plan_binds(system_binds(iso), hb, bound_cwd, site_binds,
                                                                    user_binds)]
    return binds, inputs


class Root(NamedTuple):
    image: Image
    source: int                     # format.IMAGE_SOURCE
    served: Served
    inputs: list[Input]


def _root(req: ContainerRequest, image: ImageRef) -> Root:
    """The root (mounted from the opened image, or a copy unpacked from it), its IMAGE_SOURCE, how
    it is served and why, and its inputs."""
    opts = req.options
    served = serve_image(image, ServeRequest(req.site.serve, opts.serve, req.environ, opts.quiet, req.dry_run))
    rootfs = served.source
    source = IMAGE_SOURCE["OPENED"] if rootfs.path == image.path else IMAGE_SOURCE["COPY"]
    inputs = []
    if rootfs.kind in ("squashfs", "kept"):
        inputs.append(file_input(rootfs.squashfuse, IDENTITY | CHECK["FOLLOW"]))
        if rootfs.path != image.path:  # a staged copy: while it is there (a clean-up makes the next launch
            # plan) and unchanged (its change time too: a rewrite with its times put back is another file)
            inputs.append(file_input(rootfs.path, IDENTITY | CHECK["CTIME"]))
    elif image.kind != "dir":  # unpacked: the copy, while it is there (`cache clean` removes it); and
        # a killed unpack's leftover makes the next launch a planned one, which removes it
        inputs.append(file_input(rootfs.path, CHECK["EXISTS"] | CHECK["TYPE"] | CHECK["ID"]))
        inputs.append(glob_input(os.path.join(os.path.dirname(rootfs.path), "*.partial.*")))
    if served.watch:  # staging refused there (not a private directory): its repair plans again
        inputs.append(file_input(served.watch, IDENTITY))
    if image.kind != "dir":
        inputs.append(file_input(FUSE_DEVICE, FUSE_DEVICE_CHECK))
    kind = IMG[rootfs.kind.upper()]
    return Root(Image(kind, rootfs.path, rootfs.offset, rootfs.squashfuse), source, served, inputs)


def _runscript(image: ImageRef, opts: LaunchOptions) -> Runscript:
    """`shimrun run`: the image's runscript words, its working directory and the app as run."""
    if not opts.runscript:
        return Runscript(None, "", opts.command)
    # Imported only for `shimrun run`: the OCI config module costs ~15 ms to import.
    from shim.oci.config import RUNSCRIPT, runscript_words, working_dir

    if image.oci_config is not None:
        fixed, default = runscript_words(image.oci_config)
        workdir = working_dir(image.oci_config)
    else:
        fixed, default, workdir = (RUNSCRIPT,), (), ""
    command = (*fixed, *(opts.command or default))
    if not command:
        raise UsageError(f"{image.path} has no runscript (its OCI config has no Entrypoint and no Cmd)",
                         "give the command: shimrun IMAGE COMMAND [ARGS...]")
    return Runscript((fixed, default), workdir, command)


def _shell_notice(image: ImageRef) -> tuple[str, ...]:
    """One warning when a directory image has environment scripts but no shell to source them
    (an OCI image's Env needs none: it is applied as data)."""
    if image.kind != "dir" or image.oci_config is not None:
        return ()
    from shim.elf.rootpath import RootPaths  # only for directory images (reading their /bin/sh)
    from shim.expect.envscripts import env_scripts

    paths = RootPaths(image.via)
    scripts = env_scripts(paths)
    if not scripts or paths.regular_file("/bin/sh") is not None:
        return ()
    warning = (f"shimrun: warning: {image.path} has environment scripts ({', '.join(scripts)}) but no /bin/sh "
               "to run them: the app starts without what they set")
    return (warning,)


def _oci_env(image: ImageRef) -> tuple[tuple[tuple[str, str], ...], str]:
    """An OCI image's Env (applied as data) and the name of the env script it was written to."""
    if image.oci_config is None:
        return (), ""
    from shim.oci.config import ENV_SCRIPT, env_pairs  # only for images built from OCI (~15 ms)
    from shim.oci.configcheck import check_config

    # A SIF's stored OCI config (another tool's, or an older shim's) holds to what a pull checks:
    # one line naming the field, not a launch that fails on it.
    check_config(image.oci_config, image.path)
    return env_pairs(image.oci_config), os.path.basename(ENV_SCRIPT)


def container(req: ContainerRequest, image: ImageRef) -> Container:
    opts = req.options
    image_env, image_env_script = _oci_env(image)
    iso = isolation(opts, req.cwd)
    # --no-home binds nothing there, and HOME stays the home path all the same (as Apptainer's)
    home = iso.home[1] if iso.home else _home(req.env)
    binds, inputs = _binds(req, home, iso)
    root = _root(req, image)
    inputs += root.inputs
    kept = root.image.kind == IMG["KEPT"]
    idle = kept_idle(req.environ, req.site.serve.kept_idle) if kept else 0
    appends = identity_appends(home or "/", opts.fakeroot)
    inputs += [file_input(p, IDENTITY | CHECK["FOLLOW"]) for p in ("/etc/passwd", "/etc/group") if appends]
    run = _runscript(image, opts)
    # contained, the caller's directory is not there: start in the home directory, as Apptainer does
    pwd_in = opts.pwd or run.workdir or (home if iso.contain and "home" not in iso.no_mount else "")
    env_file = read_env_file(opts.env_file) if opts.env_file else ()
    if env_file:
        inputs.append(file_input(os.path.abspath(opts.env_file), IDENTITY | CHECK["FOLLOW"]))
    env_opts = EnvOptions(cleanenv=iso.cleanenv, env_pairs=env_file + tuple(opts.env), home=home or "/",
                          image_path=image.path, pwd=pwd_in or req.cwd, image_env=image_env,
                          image_env_script=image_env_script)
    said = _shell_notice(image)
    # --debug: how the image is served, said now and by every launch of the record
    notices = root.served.notices + ((f"shimrun: {root.served.decision.line()}",) if opts.debug else ())
    record = LaunchRecord(version=native.build_id(), key="", image=root.image, stage=STAGE_DIR,
                          command="" if run.words else run.command[0] if run.command else "true",
                          env=env_rules(req.environ, env_opts), binds=tuple(binds), appends=tuple(appends),
                          fakeroot=opts.fakeroot, cwd=pwd_in or "", cwd_required=bool(opts.pwd) or opts.strict,
                          quiet=opts.quiet, debug=opts.debug, notices=tuple(notices) + said,
                          runscript=run.words, links=dev_links(iso), namespaces=iso.namespaces,
                          writable=iso.writable, image_file=image.opened.identity(root.source),
                          root_lock=root.served.lock, kept_idle=idle)
    told = notices[len(root.served.notices):] + said
    return Container(record, env_opts, run.command, tuple(inputs), () if opts.quiet else told,
                     root.served.decision)
