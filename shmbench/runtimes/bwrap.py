"""The bubblewrap runtime: rootless sandboxes from an image directory, a SIF, or the host.

Each server runs as ``bwrap ... python -m shmbench.server`` in new user, PID, IPC, network
and UTS namespaces with a private ``/dev``, ``/proc`` and ``/tmp``, a clean environment,
``--die-with-parent`` (the sandbox goes when the host does, kill -9 included),
``--new-session`` and no capabilities. No host directory is writable from inside: the
channel and the slab are inherited descriptors of sealed memory, the server's output goes
to a pipe; ``binds=`` may add writable directories, nothing else does.

Root file system:

* ``image=None`` -- not the host's root, but the part of it a server needs (see
  :func:`host_view`): the system directories (``/usr``, ``/lib*``, ``/bin``, ``/sbin``), a
  few ``/etc`` files the loader and Python read, the interpreter's prefix, and the
  directories on the host's ``sys.path`` (where the server finds shmbench, numpy,
  gymnasium and the user's ``module:attr`` envs), all read-only on a fresh tmpfs root. Not
  ``/root``, ``/home``, ``/srv``, ``/mnt``, ``/var``, ``/run``, ``/etc/shadow``, nor the
  channel base directory of other sessions, and so no host unix socket in them; abstract
  unix sockets are per network namespace, and the sandbox has its own;
* a directory -- a sandbox tree (Apptainer's ``build --sandbox`` output, or an unpacked
  SIF), read-only;
* a ``.sif`` file -- its squashfs partition unpacked once into the cache (keyed by the
  SIF's sha256) by :func:`shmbench.images.sif.unpack_sif`.

An image's ``/.singularity.d/env/*.sh`` scripts are sourced before the server starts, as
Apptainer does, so a recipe's ``%environment`` applies; ``environment=`` wins over them.
``limits=`` sizes the private /tmp (``--size``); the rest of the limits bind through the
guard (:mod:`shmbench.runtimes.guard`).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from shmbench.errors import ImageError
from shmbench.runtimes.base import (
    Launch,
    Runtime,
    image_server_command,
    injection,
    package_dir,
    parse_bind,
    serve_from_default,
    server_command,
)

__all__ = ["BwrapRuntime", "find_bwrap", "host_view"]

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# source the image's environment like `apptainer exec` does, then run the command
_ENV_WRAPPER = 'for f in /.singularity.d/env/*.sh; do [ -r "$f" ] && . "$f"; done; exec "$@"'
#: the system directories of the host root a server runs from (symlinks stay symlinks)
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: the /etc entries the dynamic loader, libc and Python read; nothing that names users
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "alternatives",
    "os-release",
    "nsswitch.conf",
    "mime.types",
)


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def _editable_sources(site_dirs: list[str]) -> list[str]:
    """Source directories of editable installs (setuptools' ``__editable___*_finder.py``
    mappings): packages the sandbox imports from outside any sys.path entry."""
    out: list[str] = []
    for site in site_dirs:
        try:
            names = [n for n in os.listdir(site) if n.startswith("__editable__") and n.endswith("_finder.py")]
        except OSError:
            continue
        for name in names:
            try:
                tree = ast.parse(Path(site, name).read_text())
            except (OSError, SyntaxError, ValueError):
                continue
            for node in tree.body:
                if (
                    isinstance(node, ast.Assign)
                    and len(node.targets) == 1
                    and getattr(node.targets[0], "id", None) == "MAPPING"
                ):
                    try:
                        mapping = ast.literal_eval(node.value)
                    except ValueError:
                        continue
                    out += [str(v) for v in mapping.values() if isinstance(v, str)]
    return out


def host_view(extra_paths: tuple[str, ...] = ()) -> list[str]:
    """The host directories (real paths, outermost first) a server over the host root sees.

    The interpreter's prefixes, the directory of its executable, the host's shmbench
    package, every directory on this process's ``sys.path`` (site-packages, PYTHONPATH
    entries, the script's directory), the sources of editable installs, and ``extra_paths``
    (the sandbox's own PYTHONPATH entries). The system directories and ``/etc`` files come
    on top (:data:`SYSTEM_DIRS`, :data:`ETC_FILES`).
    """
    wanted = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
        package_dir(),
    ]
    path_dirs = [p for p in sys.path if p and os.path.isdir(p)]
    wanted += path_dirs + _editable_sources(path_dirs) + [p for p in extra_paths if p]
    out: list[str] = []
    for p in sorted({os.path.realpath(p) for p in wanted if os.path.isdir(p)}, key=lambda p: (p.count(os.sep), p)):
        if p == "/" or any(p == o or p.startswith(o.rstrip(os.sep) + os.sep) for o in out):
            continue
        if Path(p).parts[1:2] and Path(p).parts[1] in SYSTEM_DIRS:
            continue  # the system directories are bound whole
        out.append(p)
    return out


class BwrapRuntime(Runtime):
    """Runs servers in bubblewrap sandboxes (see the module docstring).

    Args:
        image: None (the host view, read-only), a sandbox directory, or a SIF file.
        binds: extra binds, ``src[:dst[:ro|rw]]``; each source must exist.
        environment: extra environment variables (the environment starts empty).
        python: the interpreter inside the sandbox; default: this interpreter for the host
            view, ``python3`` for images.
        share_net: keep the host's network (default: a private, empty network namespace).
        limits: resource limits per server; ``tmp`` sizes the private /tmp.
        serve_from: for an image, ``"host"`` (default, or ``$SHMBENCH_SERVE_FROM``): its
            server runs the host's own shmbench, bound read-only at ``/.shmbench-host``,
            with the image's Python, numpy and gymnasium; ``"image"``: the shmbench
            installed in the image.
    """

    name = "bwrap"

    def __init__(
        self,
        image=None,
        binds=(),
        environment=None,
        *,
        python: str | None = None,
        share_net: bool = False,
        limits=None,
        serve_from: str | None = None,
    ) -> None:
        super().__init__(image, binds, environment, limits)
        self.share_net = share_net
        self.serve_from = serve_from_default(serve_from)
        self.rootfs: Path | None = None
        if image is not None:
            path = Path(image)
            if not path.exists():
                raise ImageError(f"image {path} does not exist")
            if path.is_dir():
                self.rootfs = path.resolve()
            else:
                from shmbench.images.sif import unpack_sif

                self.rootfs = unpack_sif(path)
        self.python = python or (sys.executable if self.rootfs is None else "python3")

    def sizes_tmp(self) -> bool:
        return True

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        exe = find_bwrap()
        if exe is None:
            return False, "bwrap is not installed (apt-get install bubblewrap)"
        try:
            out = subprocess.run(
                [
                    exe,
                    "--unshare-all",
                    "--die-with-parent",
                    "--ro-bind",
                    "/",
                    "/",
                    "--dev",
                    "/dev",
                    "--proc",
                    "/proc",
                    "true",
                ],
                capture_output=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"bwrap could not run: {exc}"
        if out.returncode != 0:
            why = out.stderr.decode(errors="replace").strip() or f"exit status {out.returncode}"
            return False, f"bwrap cannot create namespaces here (user namespaces disabled?): {why}"
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
        return True, f"{exe} ({version}), user namespaces work"

    # -- the sandbox's file system -----------------------------------------------------------

    def _image_root(self, destinations: list[str]) -> list[str]:
        """Arguments that make an image the sandbox's /.

        A read-only image can only take mounts on paths it already has. When a bind
        destination is missing, / becomes a tmpfs holding the image's top-level entries
        read-only, so new top-level mount points can be made; deeper missing destinations
        cannot, and are refused with a clear error.
        """
        root = self.rootfs
        source = root if root is not None else Path("/")
        missing = [d for d in destinations if not (source / d.lstrip("/")).exists()]
        for d in missing:
            top = d.strip("/").split("/")[0]
            if d.strip("/") != top and (source / top).exists():
                raise ImageError(
                    f"cannot bind to {d}: it does not exist in {self.describe_image()}, which is "
                    f"read-only (bind to a new top-level directory instead)"
                )
        if not missing:
            return ["--ro-bind", str(source), "/"]
        args = ["--tmpfs", "/"]
        for entry in sorted(os.listdir(source)):
            if entry in ("dev", "proc", "tmp"):
                continue
            path = source / entry
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), f"/{entry}"]
            elif path.is_dir() and os.access(path, os.R_OK | os.X_OK):
                args += ["--ro-bind", str(path), f"/{entry}"]
        return args

    def _host_root(self, sandbox_pythonpath: str) -> tuple[list[str], list[str]]:
        """(arguments that build the system part of the host view, the view's directories)."""
        system = ["--tmpfs", "/"]
        for entry in SYSTEM_DIRS:
            path = Path("/") / entry
            if path.is_symlink():
                system += ["--symlink", os.readlink(path), f"/{entry}"]
            elif path.is_dir():
                system += ["--ro-bind", str(path), f"/{entry}"]
        for name in ETC_FILES:
            if os.path.lexists(f"/etc/{name}"):
                system += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        return system, host_view(tuple(sandbox_pythonpath.split(os.pathsep)) if sandbox_pythonpath else ())

    def _masks(self, visible: list[str]) -> list[str]:
        """Hide the channel base directory (other sessions' logs) where a bind shows it."""
        from shmbench.transport.session import channel_base

        base = os.path.realpath(channel_base())
        if any(base == v or base.startswith(v.rstrip(os.sep) + os.sep) for v in visible):
            return ["--tmpfs", base]
        return []

    def command(self, launch: Launch, program: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
        """bwrap's argv and environment for a server -- or, given ``program``, for that
        program in the same sandbox (``shmbench shell``)."""
        exe = find_bwrap()
        if exe is None:
            raise ImageError("bwrap is not installed (apt-get install bubblewrap)")
        args = [
            exe,
            "--die-with-parent",
            "--new-session",
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "shmbench",
        ]
        if not self.share_net:
            args.append("--unshare-net")
        if os.geteuid() == 0:
            args += ["--cap-drop", "ALL"]
        binds = [parse_bind(spec) for spec in self.binds]
        injected: list[str] | None = None
        if self.rootfs is not None and program is None and self.serve_from == "host":
            extra, injected = injection(self.python, "-s")
            binds += extra
        user_env = {**self.environment, **launch.server_environment()}
        tmp = (
            ["--tmpfs", "/tmp"]
            if self.limits is None or self.limits.tmp is None
            else ["--size", str(self.limits.tmp), "--tmpfs", "/tmp"]
        )
        if self.rootfs is None:
            root, visible = self._host_root(user_env.get("PYTHONPATH", ""))
        else:
            root, visible = self._image_root([dst for _, dst, _ in binds]), []
        args += [*root, "--dev", "/dev", "--proc", "/proc", *tmp]
        for path in visible:
            args += ["--ro-bind", path, path]  # after the private /tmp: paths under /tmp stay visible
        for src, dst, mode in binds:
            args += ["--ro-bind" if mode == "ro" else "--bind", src, dst]
            visible.append(os.path.realpath(src))
        args += self._masks(visible)
        if root[:2] == ["--tmpfs", "/"]:
            args += ["--remount-ro", "/"]  # nothing but /tmp (and writable binds) stays writable
        env = {
            "PATH": _DEFAULT_PATH if self.rootfs is not None else f"{os.path.dirname(self.python)}:{_DEFAULT_PATH}",
            "HOME": "/tmp",
            "USER": "shmbench",
            "LOGNAME": "shmbench",
            "LANG": "C.UTF-8",
        }
        if self.rootfs is None and os.environ.get("LD_LIBRARY_PATH"):
            # the host's own interpreter may need its loader path (a relocated libpython)
            env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
        args += ["--clearenv", "--chdir", "/tmp"]
        for k, v in env.items():
            args += ["--setenv", k, v]
        # over the host view the server runs the host's own shmbench (see server_command);
        # an image runs the host's, injected, or the shmbench installed in it
        if program is not None:
            server = program
        elif injected is not None:
            server = injected
        elif self.rootfs is not None:
            server = image_server_command(self.python, "-s")
        else:
            server = server_command(self.python, "-s")
        if self.rootfs is not None and (self.rootfs / ".singularity.d" / "env").is_dir():
            # image scripts first, then our variables on top of them
            args += [
                "--",
                "/bin/sh",
                "-c",
                _ENV_WRAPPER,
                "sh",
                "env",
                *[f"{k}={v}" for k, v in user_env.items()],
                *server,
            ]
        else:
            for k, v in user_env.items():
                args += ["--setenv", k, v]
            args += ["--", *server]
        # bwrap itself gets a minimal environment; the sandbox's is set by --setenv
        return args, {"PATH": os.environ.get("PATH", _DEFAULT_PATH), "LANG": "C.UTF-8"}

    def describe_image(self) -> str:
        if self.image is None:
            return "the host's system and Python, read-only"
        return str(self.image)
