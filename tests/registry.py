"""Test helpers: a real OCI registry and a real HTTP file server, both on loopback.

The registry is Debian's ``docker-registry`` (the CNCF distribution registry, v2.8), started
as a child process with a private storage directory and a free port, so that ``oras://``
pulls are tested against the same protocol a public registry speaks -- no mocks. Its access
log (stdout) tells which blobs were fetched and how often.

The HTTP server is ``http.server`` in a thread; it counts requests per path and can dribble
its answer out slowly so that concurrent pulls really overlap.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["REGISTRY_BINARY", "LocalRegistry", "FileServer", "free_port", "sha256_of", "pythonpath_env"]

REGISTRY_BINARY = shutil.which("docker-registry") or shutil.which("registry")


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    """A port that was free a moment ago (the registry cannot take a pre-bound socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: shmbench-tests-only
"""


class LocalRegistry:
    """A ``docker-registry serve`` child process; ``close()`` stops it and removes its files."""

    def __init__(self, workdir: Path, *, start_timeout: float = 20.0) -> None:
        if REGISTRY_BINARY is None:
            raise FileNotFoundError("docker-registry is not installed (apt-get install docker-registry)")
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True)
        self.log_path = workdir / "access.log"
        self.process: subprocess.Popen[bytes] | None = None
        last_error = "did not start"
        for _ in range(3):  # the free port can be taken between free_port() and bind
            self.port = free_port()
            config = workdir / "config.yml"
            config.write_text(_CONFIG.format(storage=self.storage, port=self.port))
            with open(self.log_path, "wb") as log, open(workdir / "stderr.log", "wb") as err:
                self.process = subprocess.Popen(
                    [REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=err, stdin=subprocess.DEVNULL
                )
            deadline = time.monotonic() + start_timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as r:
                        if r.status == 200:
                            return
                except (urllib.error.URLError, OSError) as exc:
                    last_error = str(exc)
                time.sleep(0.05)
            last_error += "; stderr: " + (workdir / "stderr.log").read_text(errors="replace")[-2000:]
            self._stop()
        raise RuntimeError(f"docker-registry did not answer on /v2/: {last_error}")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def push_sif(
        self,
        path: Path,
        repository: str,
        tag: str,
        *,
        layer_media_type: str | None = None,
        extra_files: tuple[Path, ...] = (),
    ) -> None:
        """Push ``path`` the way ``apptainer push FILE oras://...`` does: one layer with the
        SIF media type, an empty ``{}`` config with the SIF config media type."""
        import oras.provider

        from shmbench.images.fetch import SIF_CONFIG_MEDIA_TYPE, SIF_LAYER_MEDIA_TYPE

        config = self.workdir / "sif-config.json"
        config.write_text("{}")
        client = oras.provider.Registry(hostname=self.host, insecure=True)
        client.session.trust_env = False  # never through a proxy: this is loopback
        files = [f"{path}:{layer_media_type or SIF_LAYER_MEDIA_TYPE}"]
        files += [f"{extra}:application/octet-stream" for extra in extra_files]
        response = client.push(
            target=f"{self.host}/{repository}:{tag}",
            files=files,
            manifest_config=f"{config}:{SIF_CONFIG_MEDIA_TYPE}",
            disable_path_validation=True,
            quiet=True,
        )
        client.session.close()
        if response.status_code not in (200, 201):
            raise RuntimeError(f"push failed: {response.status_code} {response.text}")

    def manifest_digest(self, repository: str, tag: str) -> str:
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.headers["Docker-Content-Digest"]

    def blob_fetches(self, repository: str, digest: str) -> int:
        """How many times the blob was served (GET answered 200 or 307) per the access log."""
        needle = f'"GET /v2/{repository}/blobs/{digest} '
        count = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            if needle in line and ('" 200 ' in line or '" 307 ' in line):
                count += 1
        return count

    def _stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self._stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class FileServer:
    """A threaded HTTP server on 127.0.0.1 serving ``files`` (URL path -> bytes).

    Attributes:
        gets: path -> number of GET requests received.
        get_times: path -> list of (start, end) monotonic times of each GET's answer.
        delay: seconds to sleep between the ``chunks`` pieces of every answer.
    """

    def __init__(self, files: dict[str, bytes] | None = None, *, delay: float = 0.0, chunks: int = 10) -> None:
        self.files = dict(files or {})
        self.delay = delay
        self.chunks = chunks
        self.gets: dict[str, int] = {}
        self.get_times: dict[str, list[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start = time.monotonic()
                with server._lock:
                    server.gets[self.path] = server.gets.get(self.path, 0) + 1
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                step = max(1, -(-len(data) // server.chunks))
                for i in range(0, len(data), step):
                    self.wfile.write(data[i : i + step])
                    self.wfile.flush()
                    if server.delay:
                        time.sleep(server.delay)
                with server._lock:
                    server.get_times.setdefault(self.path, []).append((start, time.monotonic()))

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Handler threads are joined by server_close(), so counts and times are final after close().
        self._server.daemon_threads = False
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="FileServer", daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def pythonpath_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that must import this checkout's shmbench."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env
