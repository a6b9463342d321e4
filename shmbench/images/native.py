"""The native builder: Apptainer's build of a ``Bootstrap: debootstrap`` recipe, without Apptainer.

For machines where Apptainer cannot be installed (CI runners, laptops), with tools Debian
ships: ``debootstrap`` the base system, run ``%setup`` on the host, copy ``%files`` and run
``%post`` inside bubblewrap with the new tree as ``/``, write Apptainer's metadata layout
(``/.singularity.d/{env,actions,runscript,labels.json,Singularity}``), run ``%test``,
``mksquashfs`` the tree and let ``siftool`` assemble the SIF. debootstrap creates device
nodes and root-owned files, so this builder needs real root (no fakeroot emulation).
:func:`shmbench.images.build.build` chooses between it and Apptainer. Its images are
byte-reproducible (:mod:`~shmbench.images.reproducible`) and carry a manifest of what went
into them (:mod:`~shmbench.images.manifest`).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from shmbench.errors import ImageError, RuntimeUnavailable
from shmbench.images.deffile import Definition
from shmbench.images.manifest import MANIFEST_NAME, collect
from shmbench.images.reproducible import build_epoch, normalise_sif, normalise_tree
from shmbench.images.sif import read_sif

__all__ = ["NativeBuild", "sif_arch_code"]

_LAUNCH = b"#!/usr/bin/env run-singularity\n"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STAGING = ".shmbench-build"  # scratch directory inside the rootfs while building
# siftool's numeric codes (its CLI numbers, not the on-disk values): --datatype 1 is a
# definition file, 4 a partition; --parttype 2 the primary system partition (the one
# Apptainer runs); --partfs 1 squashfs.
_SIFTOOL_DEFFILE, _SIFTOOL_PARTITION, _SIFTOOL_PRIMSYS, _SIFTOOL_SQUASHFS = 1, 4, 2, 1
_SIF_ARCH = {
    "i386": 1,
    "i686": 1,
    "x86_64": 2,
    "amd64": 2,
    "armv7l": 3,
    "armv6l": 3,
    "aarch64": 4,
    "arm64": 4,
    "ppc64": 5,
    "ppc64le": 6,
    "mips": 7,
    "mips64": 9,
    "s390x": 11,
    "riscv64": 12,
}
_PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")
_SIFTOOL_JSON = 6  # siftool's --datatype for a GenericJSON object (the manifest)


def sif_arch_code(machine: str | None = None) -> int:
    """siftool's ``--partarch`` code for a machine name (default: this machine)."""
    machine = machine or platform.machine()
    try:
        return _SIF_ARCH[machine.lower()]
    except KeyError:
        raise ImageError(f"no SIF architecture code for machine {machine!r}") from None


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ImageError(f"{tool} not found: building without Apptainer needs it (apt-get install {package})")
    return path


def _shell_of(defn: Definition, section: str) -> str:
    """The interpreter of a script section: ``/bin/sh``, or ``-c SHELL`` after its name."""
    sec = defn.sections.get(section)
    args = sec.args.split() if sec else []
    if not args:
        return "/bin/sh"
    if len(args) == 2 and args[0] == "-c":
        return args[1]
    raise ImageError(f"%{section} {' '.join(args)}: only '-c SHELL' is understood after the name")


def _as_script(body: str, shell: str = "/bin/sh") -> str:
    stripped = body.lstrip()
    if stripped.startswith("#!"):
        return stripped
    return f"#!{shell}\n\n{body}"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)


class NativeBuild:
    """One build of a debootstrap recipe without Apptainer (see the module docstring)."""

    def __init__(
        self,
        defn: Definition,
        output: Path,
        *,
        quiet: bool,
        verbose: bool = False,
        build_args: Mapping[str, str] | None = None,
        recipe_digest: str | None = None,
        recipe_name: str = "recipe.def",
    ) -> None:
        self.defn = defn
        self.recipe_name = recipe_name
        self.output = output
        self.build_args = dict(build_args or {})
        self.recipe_digest = recipe_digest
        #: every timestamp in the image (SOURCE_DATE_EPOCH; see normalise_tree)
        self.epoch = build_epoch()
        self.manifest: dict[str, object] = {}
        #: True: every step's output goes to the log only; False with verbose: streamed to
        #: the terminal; False without: one line per stage on stderr, the output in the log
        self.quiet = quiet and not verbose
        self.verbose = verbose
        self.stages = not quiet and not verbose
        if defn.bootstrap != "debootstrap":
            raise RuntimeUnavailable(
                f"'Bootstrap: {defn.header['bootstrap']}' needs Apptainer (or Singularity) to "
                f"build, and neither apptainer nor singularity is on PATH; without it "
                f"shmbench builds only 'Bootstrap: debootstrap' recipes"
            )
        for key in ("osversion", "mirrorurl"):
            if not defn.header.get(key):
                raise ImageError(f"a debootstrap recipe needs a '{key}' header")
        if "pre" in defn.sections:
            raise ImageError("%pre (Singularity 2) is not supported; use %setup")
        if os.geteuid() != 0:
            raise ImageError(
                "building without Apptainer runs debootstrap, which needs root: run the "
                "build as root, or install Apptainer and build unprivileged with "
                "'apptainer build --fakeroot'"
            )
        self.debootstrap = _require("debootstrap", "debootstrap")
        self.bwrap = _require("bwrap", "bubblewrap")
        self.mksquashfs = _require("mksquashfs", "squashfs-tools")
        self.siftool = _require("siftool", "siftool")
        self.work = Path()
        self.rootfs = Path()
        self.log = Path()

    # -- running things ---------------------------------------------------------------

    def _run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        what: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        """Run one build step: its output streamed (verbose), or into the build log, with
        one line for the stage on stderr (the default from the command line)."""
        if not self.verbose:
            start = time.monotonic()
            if self.stages:
                print(f"  {what} ...", end="", file=sys.stderr, flush=True)
            with open(self.log, "ab") as log:
                log.write(f"\n==> {what}: {' '.join(map(str, argv))}\n".encode())
                log.flush()
                proc = subprocess.run(
                    list(map(str, argv)),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    check=False,
                )
            if self.stages:
                print(
                    f" {'done' if proc.returncode == 0 else 'FAILED'} ({time.monotonic() - start:.0f} s)",
                    file=sys.stderr,
                )
        else:
            proc = subprocess.run(list(map(str, argv)), stdin=subprocess.DEVNULL, env=env, cwd=cwd, check=False)
        if proc.returncode != 0:
            raise ImageError(f"{what} failed (exit status {proc.returncode})" + self._tail())

    def _tail(self) -> str:
        if self.verbose:
            return "; its output is above"
        lines = self.log.read_text(errors="replace").splitlines()[-25:]
        return f" (full log: {self.log}):\n" + "\n".join(lines)

    def _sandbox_env(self) -> dict[str, str]:
        env = {
            "PATH": _PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "SINGULARITY_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
            "APPTAINER_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
            # reproducible: pip compiles hash-checked bytecode, tools stamp this time, and
            # Python's set and dict orders in compiled constants do not vary
            "SOURCE_DATE_EPOCH": str(self.epoch),
            "PYTHONHASHSEED": "0",
        }
        for name in _PROXY_VARS:
            for variant in (name, name.upper()):
                if variant in os.environ:
                    env[variant] = os.environ[variant]
        return env

    def _bwrap(self, *, writable: bool) -> list[str]:
        """bwrap with the rootfs as ``/``: as root with all capabilities (dpkg chowns
        files, apt drops to its own user), sharing the host network (apt, pip) and its
        name resolution, private pid/ipc/uts namespaces, ``/dev`` and ``/proc``."""
        argv = [
            self.bwrap,
            "--bind" if writable else "--ro-bind",
            str(self.rootfs),
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--die-with-parent",
            "--cap-add",
            "ALL",
        ]
        if not writable:
            argv += ["--tmpfs", "/tmp"]
        for name in ("/etc/resolv.conf", "/etc/hosts"):
            if os.path.isfile(name):
                argv += ["--ro-bind", name, name]
        return argv

    def _host_ca_bundle(self) -> str | None:
        for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
            if candidate and os.path.isfile(candidate):
                return candidate
        return None

    # -- the steps --------------------------------------------------------------------

    def run(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=".shmbench-build-", dir=self.output.parent))
        self.rootfs = self.work / "rootfs"
        # kept next to the image, after a success and after a failure
        self.log = self.output.with_name(self.output.name + ".build.log")
        self.log.write_bytes(b"")
        if self.stages:
            print(f"building {self.output.name} (log: {self.log}; -v streams it)", file=sys.stderr)
        try:
            self.bootstrap()
            self.base_environment()
            self.setup()
            self.copy_files()
            self.post()
            self.metadata()
            self.test()
            self.clean()
            self.manifest = self.collect_manifest()
            sif = self.assemble()
            read_sif(sif)
            os.replace(sif, self.output)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def bootstrap(self) -> None:
        # Apptainer's own debootstrap options: a minimal system, apt always included,
        # and a few packages a container never needs left out.
        include = ",".join(["apt", *self.defn.include])
        self._run(
            [
                self.debootstrap,
                "--variant=minbase",
                "--exclude=openssl,udev,debconf-i18n,e2fsprogs",
                f"--include={include}",
                self.defn.header["osversion"],
                self.rootfs,
                self.defn.header["mirrorurl"],
            ],
            "debootstrap",
            env=dict(os.environ, SOURCE_DATE_EPOCH=str(self.epoch), PYTHONHASHSEED="0"),
        )
        os.chmod(self.rootfs, 0o755)

    def base_environment(self) -> None:
        """Apptainer's skeleton: the directories and scripts its runtime expects."""
        root = self.rootfs
        for d in (
            ".singularity.d/libs",
            ".singularity.d/actions",
            ".singularity.d/env",
            "dev",
            "proc",
            "sys",
            "root",
            "tmp",
            "var/tmp",
            "etc",
            "home",
            "shmbench",
            _STAGING,
        ):
            (root / d).mkdir(parents=True, exist_ok=True)
        for name in ("etc/hosts", "etc/resolv.conf"):  # runtimes bind the host's over them
            _write(root / name, "")
        sourcing = 'for script in /.singularity.d/env/*.sh; do\n    if [ -f "$script" ]; then . "$script"; fi\ndone\n'
        actions = {
            "exec": sourcing + 'exec "$@"\n',
            "run": sourcing
            + (
                'if [ -x /.singularity.d/runscript ]; then exec /.singularity.d/runscript "$@"; fi\n'
                'echo "No runscript found, executing /bin/sh"\nexec /bin/sh "$@"\n'
            ),
            "shell": sourcing
            + (
                'if [ -n "${APPTAINER_SHELL:-}" ] && [ -x "$APPTAINER_SHELL" ]; then exec "$APPTAINER_SHELL" "$@"; fi\n'
                'if [ -x /bin/bash ]; then SHELL=/bin/bash; export SHELL; exec /bin/bash --norc "$@"; fi\n'
                'SHELL=/bin/sh; export SHELL; exec /bin/sh "$@"\n'
            ),
            # an instance's PID 1 waits for this signal before the start script runs
            "start": "kill -CONT 1\n"
            + sourcing
            + ("if [ -x /.singularity.d/startscript ]; then exec /.singularity.d/startscript; fi\n"),
            "test": sourcing
            + (
                'if [ -x /.singularity.d/test ]; then exec /.singularity.d/test "$@"; fi\n'
                'echo "No test found in container, executing /bin/sh -c true"\nexec /bin/sh -c true\n'
            ),
        }
        for name, body in actions.items():
            _write(root / ".singularity.d/actions" / name, "#!/bin/sh\n\n" + body, 0o755)
        env_header = "#!/bin/sh\n# Custom environment shell code should follow\n\n"
        env_files = {
            "01-base.sh": "#!/bin/sh\n",
            "90-environment.sh": env_header,
            "91-environment.sh": env_header,
            "99-base.sh": (
                '#!/bin/sh\nif [ -z "${LD_LIBRARY_PATH:-}" ]; then\n'
                "    LD_LIBRARY_PATH=/.singularity.d/libs\nelse\n"
                '    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"\nfi\n'
                'PS1="Apptainer> "\nexport LD_LIBRARY_PATH PS1\n'
            ),
            "99-runtimevars.sh": (
                "#!/bin/sh\n"
                'if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then PATH="${SING_USER_DEFINED_PREPEND_PATH}:${PATH}"; fi\n'
                'if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then PATH="${PATH}:${SING_USER_DEFINED_APPEND_PATH}"; fi\n'
                'if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then PATH="${SING_USER_DEFINED_PATH}"; fi\n'
                "unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH\n"
                "export PATH\n"
            ),
        }
        for name, text in env_files.items():
            _write(root / ".singularity.d/env" / name, text, 0o755)
        _write(root / ".singularity.d/runscript", "#!/bin/sh\n", 0o755)
        _write(root / ".singularity.d/startscript", "#!/bin/sh\n", 0o755)
        for link, target in (
            ("singularity", ".singularity.d/runscript"),
            (".run", ".singularity.d/actions/run"),
            (".exec", ".singularity.d/actions/exec"),
            (".shell", ".singularity.d/actions/shell"),
            (".test", ".singularity.d/actions/test"),
            ("environment", ".singularity.d/env/90-environment.sh"),
        ):
            if not os.path.lexists(root / link):
                os.symlink(target, root / link)

    def setup(self) -> None:
        body = self.defn.script("setup")
        if not body.strip():
            return
        script = self.work / "setup.sh"
        script.write_text(body, encoding="utf-8")
        env = dict(os.environ, SINGULARITY_ROOTFS=str(self.rootfs), APPTAINER_ROOTFS=str(self.rootfs))
        self._run(
            [_shell_of(self.defn, "setup"), "-ex", script], "%setup (on the host)", env=env, cwd=self.defn.base_dir
        )

    def copy_files(self) -> None:
        """``%files``: staged on the host (symlinks followed), then copied inside the
        sandbox, so destinations resolve through the image's own symlinks (``/lib`` ->
        ``usr/lib``), never the host's."""
        sources = self.defn.source_paths()
        if not sources:
            return
        staging = self.rootfs / _STAGING / "files"
        pairs: list[str] = []
        for index, (src, dst) in enumerate(sources):
            slot = staging / str(index) / src.name
            slot.parent.mkdir(parents=True)
            if src.is_dir():
                shutil.copytree(src, slot, symlinks=False)
            else:
                shutil.copy2(src, slot)
            if not dst.startswith("/"):
                dst = "/" + dst
            pairs += [f"/{_STAGING}/files/{index}/{src.name}", dst]
        script = (
            "while [ $# -gt 0 ]; do\n"
            "    src=$1; dst=$2; shift 2\n"
            '    case $dst in */) mkdir -p "$dst" ;; *) mkdir -p "$(dirname "$dst")" ;; esac\n'
            '    cp -fr "$src" "$dst"\n'
            "done\n"
        )
        self._run(
            [*self._bwrap(writable=True), "/bin/sh", "-e", "-c", script, "files", *pairs],
            "%files",
            env=self._sandbox_env(),
        )

    def post(self) -> None:
        body = self.defn.script("post")
        if not body.strip():
            return
        _write(self.rootfs / _STAGING / "post.sh", body)
        argv = self._bwrap(writable=True)
        env = self._sandbox_env()
        ca = self._host_ca_bundle()
        if ca:
            # Build-time downloads trust what the host trusts (a site's TLS-inspecting
            # proxy, say); the image's own trust store is left as its packages made it.
            inner = f"/{_STAGING}/host-ca.crt"
            argv += ["--ro-bind", ca, inner]
            for name in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"):
                env[name] = inner
        argv += ["--chdir", "/", _shell_of(self.defn, "post"), "-ex", f"/{_STAGING}/post.sh"]
        self._run(argv, "%post (inside the image)", env=env)

    def metadata(self) -> None:
        """Apptainer's metadata files, written after ``%post`` as Apptainer does."""
        d = self.rootfs / ".singularity.d"
        env_header = "#!/bin/sh\n# Custom environment shell code should follow\n\n"
        _write(d / "env/90-environment.sh", env_header + self.defn.script("environment"), 0o755)
        for section in ("runscript", "startscript", "test"):
            if section in self.defn.sections:
                _write(d / section, _as_script(self.defn.script(section), _shell_of(self.defn, section)), 0o755)
        if self.defn.script("help").strip():
            _write(d / "runscript.help", self.defn.script("help"))
        _write(d / "Singularity", self.defn.text)
        labels = {
            "org.label-schema.schema-version": "1.0",
            # the build's SOURCE_DATE_EPOCH, not the clock: the same inputs, the same bytes
            "org.label-schema.build-date": datetime.datetime.fromtimestamp(self.epoch, datetime.timezone.utc).strftime(
                "%A_%d_%B_%Y_%H:%M:%S_%Z"
            ),
            "org.label-schema.build-arch": platform.machine(),
            "org.label-schema.usage.shmbench.builder": "shmbench native (debootstrap + bwrap)",
        }
        for key, value in self.defn.header.items():
            labels[f"org.label-schema.usage.singularity.deffile.{key}"] = value
        if self.defn.script("help").strip():
            labels["org.label-schema.usage"] = "/.singularity.d/runscript.help"
        labels.update(self.defn.labels)
        _write(d / "labels.json", json.dumps(labels, indent="\t", sort_keys=True) + "\n")
        (self.rootfs / "shmbench").mkdir(exist_ok=True)

    def test(self) -> None:
        if not self.defn.script("test").strip():
            return
        self._run(
            [*self._bwrap(writable=False), "--chdir", "/", "/.singularity.d/actions/test"],
            "%test (inside the finished image)",
            env=self._sandbox_env(),
        )

    def clean(self) -> None:
        shutil.rmtree(self.rootfs / _STAGING, ignore_errors=True)
        for name in ("etc/hosts", "etc/resolv.conf"):
            _write(self.rootfs / name, "")
        normalise_tree(self.rootfs, self.epoch)

    def collect_manifest(self) -> dict[str, object]:
        from shmbench import __version__

        tools = []
        for tool, argv in (
            ("debootstrap", [self.debootstrap, "--version"]),
            ("mksquashfs", [self.mksquashfs, "-version"]),
        ):
            out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip().splitlines()
            tools.append(out[0].replace("version ", "").strip() if out else tool)
        return collect(
            self.rootfs,
            recipe=self.recipe_name,
            recipe_digest=self.recipe_digest,
            build_args=self.build_args,
            header=self.defn.header,
            epoch=self.epoch,
            builder=f"shmbench {__version__} native ({', '.join(tools)}, siftool)",
        )

    def assemble(self) -> Path:
        squash = self.work / "rootfs.squashfs"
        # reproducible: entries sorted (mksquashfs's order), every timestamp and the
        # filesystem's own set to the epoch, output independent of the thread count
        flags = ["-noappend", "-reproducible", "-mkfs-time", str(self.epoch), "-all-time", str(self.epoch)]
        flags += ["-no-progress"] if self.quiet else []
        self._run([self.mksquashfs, self.rootfs, squash, *flags], "mksquashfs")
        deffile = self.work / "Singularity"
        deffile.write_text(self.defn.text, encoding="utf-8")
        sif = self.work / "image.sif"
        self._run([self.siftool, "new", sif], "siftool new")
        # Group 1 holds the image's objects, as Apptainer's builds do (signing and
        # verification work on object groups).
        self._run(
            [self.siftool, "add", "--datatype", str(_SIFTOOL_DEFFILE), "--groupid", "1", sif, deffile],
            "siftool add (definition file)",
        )
        self._run(
            [
                self.siftool,
                "add",
                "--datatype",
                str(_SIFTOOL_PARTITION),
                "--parttype",
                str(_SIFTOOL_PRIMSYS),
                "--partfs",
                str(_SIFTOOL_SQUASHFS),
                "--partarch",
                str(sif_arch_code()),
                "--groupid",
                "1",
                sif,
                squash,
            ],
            "siftool add (root filesystem)",
        )
        manifest = self.work / MANIFEST_NAME
        manifest.write_text(json.dumps(self.manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        self._run(
            [
                self.siftool,
                "add",
                "--datatype",
                str(_SIFTOOL_JSON),
                "--groupid",
                "1",
                "--filename",
                MANIFEST_NAME,
                sif,
                manifest,
            ],
            "siftool add (manifest)",
        )
        _set_launch_script(sif)
        normalise_sif(sif, self.epoch)
        return sif


def _set_launch_script(sif: Path) -> None:
    """Write the ``#!`` line Apptainer's builds carry, so ``./image.sif`` runs the image.

    siftool leaves the 32-byte launch field empty; it is outside every descriptor (and any
    signature), so filling it changes nothing else.
    """
    with open(sif, "r+b") as f:
        if f.read(32).strip(b"\0"):
            return
        f.seek(0)
        f.write(_LAUNCH.ljust(32, b"\0"))
