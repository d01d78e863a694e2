"""A launch, planned: the command line and the job's environment in, a launch record out.

image -> site -> (look at the image, when a profile applies or the hardware check has no cached
answer) -> plan -> diagnostics -> record. The record is stored under the launch's key, where the
native front-end finds it next time, and handed to the C executor (shim.launch.execute), which
runs it: the same code runs a record from the cache."""

from __future__ import annotations

import io
import os
import pwd
from dataclasses import dataclass, field, replace

from shim.elf.ldcache import CACHE_FILE as LD_CACHE
from shim.errors import ExitCode, ShimError
from shim.host.paths import on_host
from shim.model import ERROR
from shim.pipeline.inputs import FUSE_DEVICE_CHECK, PRESENCE, InputSet, image_inputs, profile_inputs, read_log_inputs
from shim.pipeline.request import LaunchRequest
from shim.record.format import CHECK, IDENTITY, IMAGE_SOURCE, IMG, KEY_ENV_PREFIXES, PROV
from shim.record.model import EnvRules, Image, LaunchRecord, RecordBind
from shim.record.snapshot import RecordingEnv, file_input, glob_input

ARCH_MISMATCH = "ARCH-MISMATCH"
STAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "stage")
STAGED_LD_CACHE = "ld.so.cache"


@dataclass
class Planned:
    """A record to run, or (dry run) the exit status of printing the plan, or (facts_only) the
    provenance facts of the plan."""
    record: LaunchRecord | None = None
    key: str = ""                 # "" : not stored (a command line the front-end does not launch)
    exit_code: int = 0
    facts: dict | None = None
    image_fd: int = -1            # the opened image the record was planned on (the executor mounts it)


def _home(environ) -> str:
    home = environ.get("HOME", "")
    if not home.startswith("/"):
        home = pwd.getpwuid(os.getuid()).pw_dir
    return os.path.normpath(home)



def _load_profiles(conf_dir, host_root: str, environ):
    try:  # no profile files: do not even import the profile machinery
        if not any(n.endswith(".toml") and not n.startswith(".") for n in os.listdir(conf_dir / "profiles")):
            return None
    except OSError:
        return None
    from shim.plan.profiles import load_profiles

    return load_profiles(conf_dir, host_root=host_root, environ=environ)


def _rendered(plan, quiet: bool, debug: bool) -> str:
    """The diagnostics as the app's stderr gets them (the executor prefixes the node's name in a
    shared container)."""
    from shim.report.render import print_diagnostics

    out = io.StringIO()
    print_diagnostics(plan, out=out, quiet=quiet, verbose=debug)
    return out.getvalue()


def _refusal(plan, strict: bool) -> tuple[int, str] | None:
    if plan.has_errors() or (strict and (plan.refusals() or plan.has_warnings())):
        why = "an injection was refused" if plan.refusals() else "a diagnostic is fatal"
        more = "; --strict makes every refusal and warning fatal" if strict and not plan.has_errors() else ""
        error = ShimError(ExitCode.REFUSED, f"not starting the app: {why}",
                          f"see the lines above{more}; shimrun check IMAGE COMMAND shows the whole plan")
        return int(error.code), str(error)
    return None


def _site_bind_sources(specs, cwd: str) -> list[str]:
    return [os.path.normpath(os.path.join(cwd, s.split(":")[0])) for s in specs if s.split(":")[0]]


@dataclass
class _Found:
    """What planning found: the plan, and what the launch adds for it."""
    plan: object                                  # shim.plan.model.Plan
    ld_cache: bytes | None = None
    binds: list[RecordBind] = field(default_factory=list)


class _Planner:
    """One launch planned, step by step; each step notes the inputs it read."""

    def __init__(self, req: LaunchRequest) -> None:
        from shim.diagnose.check import JOB_VARIABLES, host_root

        self.req, self.args = req, req.args
        self.command = list(req.command)  # the app and its arguments (`shimrun run`: the runscript's)
        self.env = RecordingEnv(req.environ, declared=JOB_VARIABLES, ignored=KEY_ENV_PREFIXES)
        self.inputs = InputSet()
        self.host_root = host_root(req.environ)
        self.conf_dir = None                # the site's configuration directory (site())
        self.verdict = None                 # the site's image policy on this image (trust()); None: no policy
        self.source = IMAGE_SOURCE["OPENED"]  # the root: the opened image, or a copy of it (rootfs())

    def image(self):
        """Where the image is and what it is: its file system is read after the site's policy. It
        is opened once here (or was, by the front-end): everything after reads that descriptor."""
        from shim.image.open import locate_image

        image = locate_image(self.args.image, self.req.image_fd)
        self.inputs.extend(image_inputs(image.path, image.kind, image.opened.st))
        return image

    def arch(self, image) -> None:
        from shim.image.open import check_squashfs
        from shim.launch.preflight import check_arch

        check_squashfs(image)
        check_arch(image, self.env, fatal=not self.req.dry_run)  # exit 66 before anything is mounted

    def site(self):
        """(the site configuration, its directory, the profiles or None)."""
        from shim.site.config import CONFIG_NAME, SYSTEM_CONF_DIR, ConfigError, find_conf_dir, load_site_config

        site = load_site_config(self.args.conf)
        conf_dir = find_conf_dir(self.args.conf)
        self.inputs.extend([file_input(os.path.join(SYSTEM_CONF_DIR, CONFIG_NAME), IDENTITY | CHECK["FOLLOW"]),
                            file_input(str(conf_dir / CONFIG_NAME), IDENTITY | CHECK["FOLLOW"])])
        self.inputs.extend(file_input(os.path.join(SYSTEM_CONF_DIR, sub), CHECK["EXISTS"] | CHECK["TYPE"])
                           for sub in ("", "keys"))
        profiles = _load_profiles(conf_dir, self.host_root, self.env)
        self.inputs.extend(profile_inputs(str(conf_dir), profiles, self.host_root))
        if getattr(self.args, "nv", False):  # as `apptainer --nv`: the GPU driver profiles, by request
            gpu = [p.name for p in (profiles.profiles if profiles else ()) if p.kind == "gpu"]
            if not gpu:
                raise ConfigError(f"--nv: no GPU driver profile is configured in {conf_dir / 'profiles'}",
                                  "a site enables it by copying conf/profiles/examples/cuda-driver.toml there")
            self.args.profile = [*self.args.profile, *(n for n in gpu if n not in self.args.profile)]
        if profiles is None and self.args.profile:
            raise ConfigError(f"unknown profile '{self.args.profile[0]}' requested",
                              f"no profiles are configured in {conf_dir / 'profiles'}")
        self.conf_dir = conf_dir
        return site, conf_dir, profiles

    def trust(self, image, site):
        """The site's image policy on this image (None: the site has none), before anything is
        mounted: every [images] that applies, on the opened image."""
        if not site.images_restricted:
            return None
        from shim.site.image_policy import evaluate_all, site_policy_inputs

        self.inputs.extend(site_policy_inputs(site, self.req.environ))
        self.verdict = evaluate_all(site, image, self.req.environ)
        return self.verdict

    def refused(self, image, verdict) -> Planned:
        """A record that only refuses: cached like any, so a warm launch of a refused image is
        refused again without a look at its signatures, and nothing is mounted."""
        from shim import native

        error = verdict.error(self.args.image)
        key = self.key()
        record = LaunchRecord(version=native.build_id(), key=key, image=Image(IMG["DIR"], image.path), stage=STAGE_DIR,
                              command="true", env=EnvRules((), ()), refuse=(int(error.code), str(error)),
                              inputs=tuple(self.inputs.items), image_file=image.opened.identity())
        return Planned(record, key, image_fd=image.opened.fd)

    def provenance_targets(self, site) -> tuple[tuple[int, str], ...]:
        given = getattr(self.args, "provenance", None)
        # DIR/ names a directory (the executor writes one file per run into it): the slash is kept,
        # so that a missing one is named as the directory that is missing, not as a file in its parent.
        where = os.path.normpath(os.path.join(self.req.cwd, given)) if given else ""
        out = [(PROV["USER"], where + ("/" if given.endswith("/") and where != "/" else ""))] if given else []
        out += [(PROV["SITE"], site_dir) for site_dir in site.provenance_dirs]
        return tuple(out)

    def signatures(self, image) -> dict | None:
        """The signature verdicts a provenance record names: the policy's, or a check with every
        key the user and the site trust (reported, never refusing)."""
        from shim.image.open import image_kind

        verdict, conf_dir = self.verdict, self.conf_dir
        if verdict is not None and verdict.report is not None:
            return verdict.report.to_json()
        if image_kind(image) != "sif":
            return None
        from shim.site.image_policy import key_inputs
        from shim.verify import trusted_keys, verify_file

        self.inputs.extend(key_inputs(conf_dir, self.req.environ, include_user=True))
        try:
            with image.opened.reader() as f:
                return verify_file(f, image.path, trusted_keys(conf_dir, self.req.environ, include_user=True)).to_json()
        except ShimError as e:
            return {"error": str(e)}

    def facts(self, image, plan, site) -> dict:
        from shim.provenance.facts import FactsInput, planned_facts

        signatures = self.signatures(image)
        return planned_facts(FactsInput(image=image, given=self.args.image, plan=plan, site_path=site.path,
                                        command=tuple(self.command), signatures=signatures,
                                        policy=self.verdict.to_json() if self.verdict is not None else None,
                                        host_root=self.host_root, environ=self.req.environ))

    def binds(self, site, home: str | None, iso) -> list[RecordBind]:
        from shim.launch.binds import parse_bind, parse_bind_list, plan_binds
        from shim.launch.contain import home_bind, parse_mount, system_binds

        cwd = self.req.cwd
        site_binds = [] if "bind-paths" in iso.no_mount else [
            b for b in (parse_bind(s, site.path, cwd, optional=True) for s in site.binds) if b]
        site_binds = [b for b in site_binds if b.dst not in iso.no_mount]
        user_binds = parse_bind_list(",".join([self.req.environ.get("SHIMRUN_BIND", "")] + self.args.bind),
                                     "--bind/SHIMRUN_BIND", cwd)
        user_binds += [parse_mount(spec) for spec in getattr(self.args, "mount", None) or []]
        self.inputs.extend(file_input(src, PRESENCE) for src in _site_bind_sources(site.binds, cwd))
        self.inputs.extend(file_input(b.src, PRESENCE) for b in user_binds)
        if iso.home is not None:
            self.inputs.add(file_input(iso.home[0], PRESENCE))
        bound_cwd = None if iso.contain or "cwd" in iso.no_mount else cwd
        hb = home_bind(iso, home) if home else None
        return [RecordBind(b.src, b.dst, b.flags)
                for b in plan_binds(system_binds(iso), hb, bound_cwd, site_binds, user_binds)]

    def rootfs(self, image) -> tuple[Image, tuple[str, ...]]:
        from shim.launch.rootfs import FUSE_DEVICE, choose_rootfs

        rootfs, notices = choose_rootfs(image, self.args.quiet)
        # the root is the opened image itself, unless it is a copy extracted from it
        self.source = IMAGE_SOURCE["OPENED"] if rootfs.path == image.path else IMAGE_SOURCE["COPY"]
        if rootfs.kind == "squashfs":
            self.inputs.add(file_input(rootfs.squashfuse, IDENTITY | CHECK["FOLLOW"]))
        elif image.kind != "dir":  # extracted: the copy, while it is there; and a killed extraction's
            # leftover (another image's) makes the next launch a planned one, which removes it
            self.inputs.add(file_input(rootfs.path, CHECK["EXISTS"] | CHECK["TYPE"] | CHECK["ID"]))
            self.inputs.add(glob_input(os.path.join(os.path.dirname(rootfs.path), "*.partial.*")))
        if image.kind != "dir":
            self.inputs.add(file_input(FUSE_DEVICE, FUSE_DEVICE_CHECK))
        kind = IMG["SQUASHFS"] if rootfs.kind == "squashfs" else IMG["DIR"]
        return Image(kind, rootfs.path, rootfs.offset, rootfs.squashfuse), notices

    def base(self, image, site) -> tuple[LaunchRecord, object]:
        """The record of everything but what planning adds, and the environment's options."""
        from shim import native
        from shim.launch.contain import dev_links, isolation, read_env_file
        from shim.launch.environment import EnvOptions, env_rules
        from shim.launch.identity import identity_appends

        args = self.args
        _check_oci_config(image)
        iso = isolation(args, self.req.cwd)
        # --no-home binds nothing there, and HOME stays the home path all the same (as Apptainer's)
        home = iso.home[1] if iso.home else _home(self.env)
        binds = self.binds(site, home, iso)
        root, notices = self.rootfs(image)
        appends = identity_appends(home or "/", args.fakeroot)
        self.inputs.extend(file_input(p, IDENTITY | CHECK["FOLLOW"]) for p in ("/etc/passwd", "/etc/group") if appends)
        runscript, workdir = self.runscript(image)
        # contained, the caller's directory is not there: start in the home directory, as Apptainer does
        pwd = args.pwd or workdir or (home if iso.contain and "home" not in iso.no_mount else "")
        env_file = read_env_file(args.env_file) if getattr(args, "env_file", None) else ()
        if env_file:
            self.inputs.add(file_input(os.path.abspath(args.env_file), IDENTITY | CHECK["FOLLOW"]))
        env_opts = EnvOptions(cleanenv=iso.cleanenv, env_pairs=env_file + tuple(args.env), home=home or "/",
                              image_path=image.path, pwd=pwd or self.req.cwd, image_env=_image_env(image),
                              image_env_script=_image_env_script(image))
        record = LaunchRecord(version=native.build_id(), key="", image=root, stage=STAGE_DIR,
                              command="" if runscript else self.command[0] if self.command else "true",
                              env=env_rules(self.req.environ, env_opts), binds=tuple(binds), appends=tuple(appends),
                              fakeroot=args.fakeroot, cwd=pwd or "", cwd_required=bool(args.pwd) or args.strict,
                              quiet=args.quiet, debug=args.debug, notices=tuple(notices) + self.shell_notice(image),
                              runscript=runscript, links=dev_links(iso), namespaces=iso.namespaces,
                              writable=iso.writable, image_file=image.opened.identity(self.source))
        return record, env_opts

    def runscript(self, image) -> tuple[tuple[tuple[str, ...], tuple[str, ...]] | None, str]:
        """`shimrun run`: the image's runscript words and working directory (and self.command, the
        app as this launch runs it, for the look at the image)."""
        if not getattr(self.args, "runscript", False):
            return None, ""
        from shim.errors import UsageError
        from shim.oci.config import RUNSCRIPT, runscript_words, working_dir

        given = tuple(self.req.command)
        if image.oci_config is not None:
            fixed, default = runscript_words(image.oci_config)
            workdir = working_dir(image.oci_config)
        else:
            fixed, default, workdir = (RUNSCRIPT,), (), ""
        self.command = [*fixed, *(given or default)]
        if not self.command:
            raise UsageError(f"{image.path} has no runscript (its OCI config has no Entrypoint and no Cmd)",
                             "give the command: shimrun IMAGE COMMAND [ARGS...]")
        return (fixed, default), workdir

    def shell_notice(self, image) -> tuple[str, ...]:
        """One warning when a directory image has environment scripts but no shell to source them
        (an OCI image's Env needs none: it is applied as data)."""
        if image.kind != "dir" or image.oci_config is not None:
            return ()
        from shim.elf.rootpath import RootPaths
        from shim.expect.envscripts import env_scripts

        paths = RootPaths(image.via)
        scripts = env_scripts(paths)
        if not scripts or paths.regular_file("/bin/sh") is not None:
            return ()
        message = (f"shimrun: warning: {image.path} has environment scripts ({', '.join(scripts)}) but no /bin/sh "
                   "to run them: the app starts without what they set")
        import sys

        if not self.args.quiet:
            print(message, file=sys.stderr)
        return (message,)

    def hardware(self, image, profiles) -> tuple[str | None, tuple | None]:
        """The hardware check's key (None: off) and its cached answer (diagnostics, reads) or None."""
        from shim.diagnose.check import cached, check_key, job_inputs
        from shim.host.fingerprint import host_inputs

        environ = self.req.environ
        app = self.command[0] if self.command else None
        key = None if environ.get("SHIMRUN_NO_HW_CHECK") else check_key(image, app, environ, self.host_root)
        known = cached(key, image.via if image.kind == "dir" else "") if key else None
        if key:
            self.inputs.extend(job_inputs(environ))
        if key or profiles is not None:
            self.inputs.extend(host_inputs(self.host_root))
        return key, known

    def analysis_job(self, image, site, profiles, base: LaunchRecord, hw: tuple) -> object:
        from shim import native
        from shim.launch.environment import DEFAULT_PATH
        from shim.model import ERROR, WARNING
        from shim.pipeline.analysis import AnalysisJob
        from shim.record.encode import DIRECT, encode

        args, (key, known) = self.args, hw
        # the analysis only reads the image: no namespaces of the app's (a PID namespace's init)
        prepare = encode(replace(base, namespaces=0, writable=False))
        path = native.record_env(prepare, {}, DIRECT).get("PATH", DEFAULT_PATH)
        return AnalysisJob(prepare_record=prepare, image_fd=image.opened.fd, stage=STAGE_DIR, image_path=image.path,
                           image_arch=image.arch,
                           image_dir=image.path if image.kind == "dir" else "", profiles=profiles,
                           requested=tuple(args.profile), no_profiles=args.no_profiles,
                           command=tuple(self.command), path=path, host_root=self.host_root,
                           refusal_severity=ERROR if site.refusal == "error" else WARNING,
                           environ=dict(self.req.environ), hw_key=key, hw_known=known[0] if known else None,
                           debug=args.debug, look_for_command=self.req.dry_run)

    def analysed(self, image, analysis, known) -> _Found:
        """What the look at the image read, and the binds its plan adds."""
        from shim.launch.binds import KEEPDEV, RO

        if image.kind == "dir":
            self.inputs.extend(read_log_inputs(image.path, analysis.image_reads))
            self.inputs.extend(read_log_inputs(image.path, known[1] if known else {}))
        for root, reads in analysis.host_reads.items():
            self.inputs.extend(read_log_inputs(root, reads))
        self.inputs.add(file_input(on_host(self.host_root, LD_CACHE), IDENTITY | CHECK["FOLLOW"]))
        # Plan paths are the host's; on a simulated node (SHIMRUN_HOST_ROOT) they lie under its root.
        binds = [RecordBind(on_host(self.host_root, b.src), b.dst, (RO if b.read_only else 0)
                            | (KEEPDEV if b.device else 0)) for b in analysis.plan.binds]
        if analysis.ld_cache:
            binds.append(RecordBind(os.path.join(STAGE_DIR, STAGED_LD_CACHE), LD_CACHE, RO))
        return _Found(analysis.plan, analysis.ld_cache, binds)

    def key(self) -> str:
        from shim import native

        argv = ["shimrun", *self.req.argv]
        image_at = native.image_index(argv)
        return native.record_key(argv, image_at, self.req.cwd, self.req.environ) if image_at > 0 else ""


def _image_env(image) -> tuple[tuple[str, str], ...]:
    if image.oci_config is None:
        return ()
    from shim.oci.config import env_pairs

    return env_pairs(image.oci_config)


def _image_env_script(image) -> str:
    """The name of the env script an OCI image's Env was written to (the launch applies it as data)."""
    if image.oci_config is None:
        return ""
    from shim.oci.config import ENV_SCRIPT

    return os.path.basename(ENV_SCRIPT)


def _check_oci_config(image) -> None:
    """A SIF's stored OCI config (another tool's, or an older shim's) holds to what a pull checks:
    one line naming the field, not a launch that fails on it."""
    if image.oci_config is not None:
        from shim.oci.configcheck import check_config

        check_config(image.oci_config, image.path)


def wants_analysis(req: LaunchRequest, profiles, hw: tuple) -> bool:
    """The image is looked at for a dry run, an unknown hardware verdict, or a profile that applies."""
    key, known = hw
    args = req.args
    return bool(req.dry_run or (key and known is None) or args.profile or (
        profiles is not None and not args.no_profiles
        and any(p.available and p.applies != "on-request" for p in profiles.profiles)))


def plan_launch(req: LaunchRequest) -> Planned:
    """The launch planned; a SIF's objects are hashed once for its signature check and its
    provenance record alike."""
    from shim.verify.shared import shared_digests

    with shared_digests():
        return _plan_launch(req)


def _plan_launch(req: LaunchRequest) -> Planned:
    from shim.diagnose.check import apply_site_policy
    from shim.launch.environment import env_rules
    from shim.plan.model import Plan

    planner = _Planner(req)
    image = planner.image()
    site, _conf_dir, profiles = planner.site()
    verdict = planner.trust(image, site)
    if verdict is not None and not verdict.allowed:
        if req.dry_run:
            raise verdict.error(req.args.image)
        return planner.refused(image, verdict)
    planner.arch(image)
    targets = () if req.dry_run else planner.provenance_targets(site)
    base, env_opts = planner.base(image, site)
    hw = planner.hardware(image, profiles)
    if not wants_analysis(req, profiles, hw):
        found, reads = hw[1] or ([], {})
        if image.kind == "dir":
            planner.inputs.extend(read_log_inputs(image.path, reads))
        result = _Found(Plan(image=image.path, diagnostics=apply_site_policy(found, site.policy())))
    else:
        from shim.pipeline.analysis import analyse

        analysis = analyse(planner.analysis_job(image, site, profiles, base, hw))
        analysis.plan.diagnostics = apply_site_policy(analysis.plan.diagnostics, site.policy())
        if req.facts_only:
            return Planned(facts=planner.facts(image, analysis.plan, site))
        if req.dry_run:
            return _dry_run(req, analysis.plan, analysis.command_problem)
        result = planner.analysed(image, analysis, hw[1])
    plan = result.plan
    planner.inputs.extend(planner.env.read.values())
    rules = env_rules(req.environ, replace(env_opts, edits=tuple(plan.env))) if plan.env else base.env
    key = planner.key()
    record = replace(base, key=key, env=rules, binds=base.binds + tuple(result.binds),
                     stage_files=((STAGED_LD_CACHE, result.ld_cache),) if result.ld_cache else (),
                     diagnostics=_rendered(plan, req.args.quiet, req.args.debug),
                     refuse=_refusal(plan, req.args.strict))
    if targets:
        from shim.provenance.facts import facts_json

        facts = planner.facts(image, plan, site)
        record = replace(record, provenance=targets, provenance_facts=facts_json(facts))
    return Planned(replace(record, inputs=tuple(planner.inputs.items)), key, image_fd=image.opened.fd)


def _dry_run(req: LaunchRequest, plan, command_problem: tuple[int, str] | None) -> Planned:
    """The plan printed; the exit status the launch would have before its app runs (an image of
    another architecture: 66, as the launch; a refusal: 67), else the command's (126, 127)."""
    import sys

    from shim.report.render import print_plan

    print_plan(plan, req.as_json)
    if any(d.code == ARCH_MISMATCH and d.severity == ERROR for d in plan.diagnostics):
        return Planned(exit_code=int(ExitCode.ARCH))
    if plan.has_errors() or (req.args.strict and plan.refusals()):
        return Planned(exit_code=int(ExitCode.REFUSED))
    if command_problem is not None:
        sys.stdout.flush()  # the plan, then the line saying why the launch would stop
        print(f"shimrun: error: {command_problem[1]}", file=sys.stderr)
        return Planned(exit_code=command_problem[0])
    return Planned(exit_code=0)


def store(planned: Planned, data: bytes, environ) -> None:
    """Keep the record where the front-end looks for it (unless SHIMRUN_NO_RECORD_CACHE)."""
    from shim.cachefiles import cache_path, write_atomic
    from shim.record.format import NO_RECORD_CACHE, RECORDS_DIR

    if planned.key and not environ.get(NO_RECORD_CACHE):
        write_atomic(cache_path(RECORDS_DIR, f"{planned.key}.rec"), data)
