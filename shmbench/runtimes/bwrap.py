"""The bubblewrap runtime: rootless sandboxes from an image directory, a SIF, or the host.

Each server runs as ``bwrap ... python -m shmbench.server`` in new user, PID, IPC, network
and UTS namespaces with a private ``/dev``, ``/proc`` and ``/tmp``, a clean environment,
``--die-with-parent`` (the sandbox goes when the host does, kill -9 included) and
``--new-session``. The channel directory is the only writable host path (at /shmbench).

Root file system:

* ``image=None`` -- the host's own directories, read-only, on a fresh tmpfs root (so
  /shmbench can be created without touching the host's /);
* a directory -- a sandbox tree (Apptainer's ``build --sandbox`` output, or an unpacked
  SIF), read-only;
* a ``.sif`` file -- its squashfs partition unpacked once into the cache (keyed by the
  SIF's sha256) by :func:`shmbench.images.sif.unpack_sif`.

An image's ``/.singularity.d/env/*.sh`` scripts are sourced before the server starts, as
Apptainer does, so a recipe's ``%environment`` applies; ``environment=`` wins over them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from shmbench.errors import ImageError
from shmbench.runtimes.base import CHANNEL_MOUNT, Launch, Runtime, package_dir, parse_bind, server_command

__all__ = ["BwrapRuntime", "find_bwrap"]

#: host directories never exposed under image=None: they are replaced by private ones,
#: hold other sessions' channels, or are not meant to be read
_HOST_SKIP = {"dev", "proc", "tmp", "run", "lost+found", "shmbench", "sys"}
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# source the image's environment like `apptainer exec` does, then run the command
_ENV_WRAPPER = 'for f in /.singularity.d/env/*.sh; do [ -r "$f" ] && . "$f"; done; exec "$@"'


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


class BwrapRuntime(Runtime):
    """Runs servers in bubblewrap sandboxes (see the module docstring).

    Args:
        image: None (host root, read-only), a sandbox directory, or a SIF file.
        binds: extra binds, ``src[:dst[:ro|rw]]``.
        environment: extra environment variables (the environment starts empty).
        python: the interpreter inside the sandbox; default: this interpreter for the host
            root, ``python3`` for images.
        share_net: keep the host's network (default: a private, empty network namespace).
    """

    name = "bwrap"

    def __init__(
        self, image=None, binds=(), environment=None, *, python: str | None = None, share_net: bool = False
    ) -> None:
        super().__init__(image, binds, environment)
        self.share_net = share_net
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

    def _root_args(self, destinations: list[str]) -> list[str]:
        """Arguments that build the sandbox's /.

        A read-only image can only take mounts on paths it already has. When /shmbench or
        a bind destination is missing, / becomes a tmpfs holding the tree's top-level
        entries read-only, so new top-level mount points can be made; deeper missing
        destinations cannot, and are refused with a clear error.
        """
        root = self.rootfs
        source = root or Path("/")
        missing = [d for d in destinations if root is None or not (root / d.lstrip("/")).exists()]
        for d in missing:
            top = d.strip("/").split("/")[0]
            if d.strip("/") != top and (source / top).exists() and not (source / d.lstrip("/")).exists():
                raise ImageError(
                    f"cannot bind to {d}: it does not exist in {self.describe_image()}, "
                    f"which is read-only (bind to a new top-level directory instead)"
                )
        if root is not None and not missing:
            return ["--ro-bind", str(root), "/"]
        args = ["--tmpfs", "/"]
        for entry in sorted(os.listdir(source)):
            if root is None and entry in _HOST_SKIP:
                continue
            if entry in ("dev", "proc", "tmp", "shmbench"):
                continue
            path = source / entry
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), f"/{entry}"]
            elif path.is_dir() and os.access(path, os.R_OK | os.X_OK):
                args += ["--ro-bind", str(path), f"/{entry}"]
        if root is None:
            args += ["--ro-bind-try", "/sys", "/sys"]
        return args

    def command(self, launch: Launch) -> tuple[list[str], dict[str, str]]:
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
        root = self._root_args([CHANNEL_MOUNT] + [dst for _, dst, _ in binds])
        args += root
        args += [
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            "--bind",
            str(launch.session_dir),
            CHANNEL_MOUNT,
        ]
        user_env = {
            **self.environment,
            **launch.environment,
            "SHMBENCH_CHANNEL": f"{CHANNEL_MOUNT}/{launch.channel_name}",
        }
        if self.rootfs is None:
            for path in self._hidden_host_paths(user_env):
                args += ["--ro-bind", path, path]
        for src, dst, mode in binds:
            args += ["--ro-bind" if mode == "ro" else "--bind", src, dst]
        if root[0] == "--tmpfs":
            args += ["--remount-ro", "/"]  # nothing but /tmp and /shmbench stays writable
        env = {
            "PATH": _DEFAULT_PATH if self.rootfs is not None else f"{os.path.dirname(self.python)}:{_DEFAULT_PATH}",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
        }
        if self.rootfs is None and os.environ.get("LD_LIBRARY_PATH"):
            # the host's own interpreter may need its loader path (a relocated libpython)
            env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
        args += ["--clearenv", "--chdir", "/tmp"]
        for k, v in env.items():
            args += ["--setenv", k, v]
        # over the host root the server runs the host's own shmbench (see server_command);
        # an image runs the shmbench installed in it
        server = (
            [self.python, "-s", "-m", "shmbench.server"]
            if self.rootfs is not None
            else server_command(self.python, "-s")
        )
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

    @staticmethod
    def _hidden_host_paths(user_env: dict[str, str]) -> list[str]:
        """Host paths the server needs that the sandbox's private /tmp (or /run) would hide.

        Under the host root the server imports shmbench from wherever this process does --
        with an editable install that is the source checkout, which CI may well have cloned
        into /tmp -- and PYTHONPATH entries given in ``environment=`` may point there too.
        They are bound read-only at their own paths.
        """
        wanted = [str(Path(package_dir()).resolve().parent), os.path.realpath(sys.prefix)]
        wanted += [p for p in user_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        out: list[str] = []
        for path in wanted:
            parts = Path(path).parts
            if (
                len(parts) > 2
                and parts[1] in ("tmp", "run")
                and os.path.isdir(path)
                and not any(path == o or path.startswith(o + os.sep) for o in out)
            ):
                out.append(path)
        return out

    def describe_image(self) -> str:
        if self.image is None:
            return "the host root (read-only)"
        return str(self.image)
