"""shmbench.images.fetch: pulls over oras, https and file, verified, cached, locked, resumable.

Everything here is real: a docker-registry on 127.0.0.1 holding a SIF pushed with oras, an
HTTP server, separate processes racing for one image.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from image_helpers import fake_sif, image_files
from registry import (
    FileServer,
    free_port,
    pythonpath_env,
    sha256_of,
)

from shmbench.errors import DigestMismatch, ImageError
from shmbench.images.fetch import pull
from shmbench.images.store import (
    IMAGES_SUBDIR,
    cached_path,
    file_digest,
)

pytestmark = pytest.mark.usefixtures("cache_dir")


def test_remote_pull_without_digest_is_refused(server, cache_dir):
    server.files["/a.sif"] = b"x"
    with pytest.raises(ImageError, match="pinned"):
        pull(server.url("/a.sif"), None)
    assert server.gets == {}


def test_oras_pull(registry, light, cache_dir):
    ref, digest, data = light
    before = registry.blob_fetches("shmbench/light", digest)
    path = pull(ref, digest, progress=False)
    assert path.parent == cache_dir / IMAGES_SUBDIR
    assert path.name == "sha256-" + digest.split(":")[1]
    assert path.read_bytes() == data
    assert file_digest(path) == digest
    assert registry.blob_fetches("shmbench/light", digest) == before + 1
    # A second pull is a cache hit: the registry is not asked for the blob again.
    assert pull(ref, digest, progress=False) == path
    assert registry.blob_fetches("shmbench/light", digest) == before + 1
    assert stat.S_IMODE((cache_dir / IMAGES_SUBDIR).stat().st_mode) == 0o700


def test_oras_pull_by_manifest_digest(registry, light):
    _, digest, data = light
    manifest = registry.manifest_digest("shmbench/light", "0.1")
    path = pull(f"oras://{registry.host}/shmbench/light@{manifest}", digest, progress=False)
    assert path.read_bytes() == data


def test_oras_wrong_digest_downloads_nothing(registry, light, cache_dir):
    ref, digest, _ = light
    wrong = "sha256:" + "0" * 64
    before = registry.blob_fetches("shmbench/light", digest)
    with pytest.raises(DigestMismatch) as info:
        pull(ref, wrong, progress=False)
    assert wrong in str(info.value) and digest in str(info.value)
    assert (info.value.expected, info.value.actual) == (wrong, digest)
    assert registry.blob_fetches("shmbench/light", digest) == before
    assert image_files(cache_dir) == []


def test_oras_rejects_what_apptainer_would_not_pull(registry, tmp_path):
    sif = tmp_path / "a.sif"
    sif.write_bytes(fake_sif(1000, seed=2))
    registry.push_sif(sif, "shmbench/targz", "1", layer_media_type="application/vnd.oci.image.layer.v1.tar+gzip")
    with pytest.raises(ImageError, match="not a SIF"):
        pull(f"oras://{registry.host}/shmbench/targz:1", sha256_of(sif.read_bytes()), progress=False)
    other = tmp_path / "notes.txt"
    other.write_text("extra file")
    registry.push_sif(sif, "shmbench/twolayers", "1", extra_files=(other,))
    with pytest.raises(ImageError, match="exactly one layer"):
        pull(f"oras://{registry.host}/shmbench/twolayers:1", sha256_of(sif.read_bytes()), progress=False)


def test_oras_missing_tag(registry, cache_dir):
    with pytest.raises(ImageError, match="404"):
        pull(f"oras://{registry.host}/shmbench/light:no-such-tag", "sha256:" + "1" * 64, progress=False)
    assert image_files(cache_dir) == []


def test_oras_https_forced_on_plain_http_registry_fails_cleanly(registry, light):
    ref, digest, _ = light
    with pytest.raises(ImageError, match="download failed"):
        pull(ref, digest, progress=False, insecure=False)


def test_oras_unreachable_registry_fails_fast(cache_dir):
    # oras-py's own retry loop would sleep for minutes here; shmbench tries once.
    start = time.monotonic()
    with pytest.raises(ImageError, match="download failed"):
        pull(f"oras://127.0.0.1:{free_port()}/shmbench/light:0.1", "sha256:" + "2" * 64, progress=False)
    assert time.monotonic() - start < 5
    assert image_files(cache_dir) == []


def test_http_pull_and_cache_hit(server, cache_dir):
    data = fake_sif(200_000, seed=3)
    server.files["/light.sif"] = data
    path = pull(server.url("/light.sif"), sha256_of(data), progress=False)
    assert path.read_bytes() == data
    assert server.gets == {"/light.sif": 1}
    assert pull(server.url("/light.sif"), sha256_of(data), progress=False) == path
    assert server.gets == {"/light.sif": 1}
    assert image_files(cache_dir) == [path.name]


def test_http_wrong_digest_keeps_nothing(server, cache_dir):
    data = fake_sif(50_000, seed=4)
    server.files["/bad.sif"] = data
    wrong = "sha256:" + "3" * 64
    with pytest.raises(DigestMismatch) as info:
        pull(server.url("/bad.sif"), wrong, progress=False)
    assert wrong in str(info.value) and sha256_of(data) in str(info.value)
    assert server.gets == {"/bad.sif": 1}
    assert image_files(cache_dir) == []  # neither the final name nor a partial file
    assert cached_path(wrong) is None and cached_path(sha256_of(data)) is None


def test_http_404(server, cache_dir):
    with pytest.raises(ImageError, match="404"):
        pull(server.url("/missing.sif"), "sha256:" + "4" * 64, progress=False)
    assert image_files(cache_dir) == []


def test_http_connection_cut_mid_download_leaves_nothing(cache_dir):
    """The server promises more bytes than it sends and hangs up: no file may appear."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with pytest.raises(ImageError, match="download failed"):
            pull(f"http://127.0.0.1:{port}/cut.sif", "sha256:" + "5" * 64, progress=False)
    finally:
        thread.join(10)
        listener.close()
    assert image_files(cache_dir) == []


def test_offline(server, cache_dir):
    data = fake_sif(10_000, seed=5)
    server.files["/o.sif"] = data
    digest = sha256_of(data)
    with pytest.raises(ImageError, match="offline") as info:
        pull(server.url("/o.sif"), digest, offline=True, progress=False)
    assert digest in str(info.value)
    assert server.gets == {}
    path = pull(server.url("/o.sif"), digest, progress=False)
    assert pull(server.url("/o.sif"), digest, offline=True) == path
    assert server.gets == {"/o.sif": 1}


def test_offline_hit_needs_no_server(tmp_path, cache_dir):
    data = fake_sif(10_000, seed=6)
    src = tmp_path / "src.sif"
    src.write_bytes(data)
    path = pull(src.as_uri(), sha256_of(data), progress=False)
    src.unlink()
    # Same bytes, any reference: the cache is keyed by digest, the server is never asked.
    assert pull(f"http://127.0.0.1:{free_port()}/gone.sif", sha256_of(data), offline=True) == path


def test_file_url_is_copied_into_cache(tmp_path, cache_dir):
    data = fake_sif(70_000, seed=7)
    src = tmp_path / "share" / "light.sif"
    src.parent.mkdir()
    src.write_bytes(data)
    path = pull(src.as_uri(), sha256_of(data), progress=False)
    assert path != src and path.parent == cache_dir / IMAGES_SUBDIR
    assert path.read_bytes() == data
    with pytest.raises(ImageError, match="no such file"):
        pull((tmp_path / "nope.sif").as_uri(), "sha256:" + "6" * 64, progress=False)


def test_two_references_share_one_file(server, tmp_path, cache_dir):
    data = fake_sif(20_000, seed=8)
    src = tmp_path / "a.sif"
    src.write_bytes(data)
    server.files["/b.sif"] = data
    first = pull(src.as_uri(), sha256_of(data), progress=False)
    second = pull(server.url("/b.sif"), sha256_of(data), progress=False)
    assert first == second
    assert server.gets == {}
    assert image_files(cache_dir) == [first.name]


def test_local_path(tmp_path, cache_dir):
    data = fake_sif(5_000, seed=9)
    src = tmp_path / "local.sif"
    src.write_bytes(data)
    assert pull(str(src), None) == src
    assert pull(str(src), sha256_of(data), progress=False) == src
    wrong = "sha256:" + "7" * 64
    with pytest.raises(DigestMismatch, match="left in place"):
        pull(str(src), wrong, progress=False)
    assert src.read_bytes() == data  # the user's file is never removed
    assert image_files(cache_dir) == []  # and never copied
    with pytest.raises(ImageError, match="no such file"):
        pull(str(tmp_path / "missing.sif"), None)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    assert pull(str(sandbox), None) == sandbox
    with pytest.raises(ImageError, match="not a regular file"):
        pull(str(sandbox), sha256_of(data))


def test_progress_bar_is_drawn_on_a_terminal_only(server, capsys, monkeypatch):
    import io

    data = fake_sif(100_000, seed=10)
    server.files["/bar.sif"] = data
    pull(server.url("/bar.sif"), sha256_of(data), progress=True)
    assert capsys.readouterr().err == ""  # a pipe or a log file: no frames

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    server.files["/bar2.sif"] = data + b"x"
    pull(server.url("/bar2.sif"), sha256_of(data + b"x"), progress=True)
    assert "bar2.sif" in tty.getvalue() and "B" in tty.getvalue()


def test_stale_partial_download_is_cleaned(server, cache_dir):
    data = fake_sif(10_000, seed=11)
    server.files["/p.sif"] = data
    digest = sha256_of(data)
    directory = cache_dir / IMAGES_SUBDIR
    directory.mkdir(parents=True)
    stale = directory / f".sha256-{digest.split(':')[1]}.12345.deadbeef.part"
    stale.write_bytes(b"half a download from a killed process")
    path = pull(server.url("/p.sif"), digest, progress=False)
    assert not stale.exists()
    assert image_files(cache_dir) == [path.name]


CHILD = r"""
import json, os, sys, time
from shmbench.images.fetch import pull
ref, digest, go = sys.argv[1:4]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
start = time.monotonic()
path = pull(ref, digest, progress=False)
print(json.dumps({"path": str(path), "start": start, "end": time.monotonic()}), flush=True)
"""


def pull_in_two_processes(ref: str, digest: str, tmp_path: Path, cache_dir: Path) -> list[dict]:
    go = tmp_path / "go"
    env = pythonpath_env(SHMBENCH_CACHE_DIR=str(cache_dir))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, ref, digest, str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:  # both have imported shmbench before either starts
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        go.touch()
        results = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_concurrent_http_pulls_download_once(tmp_path, cache_dir):
    data = fake_sif(400_000, seed=30)
    # 20 pieces, 50 ms apart: the download takes about a second, so both processes are
    # certainly inside pull() while it runs.
    server = FileServer({"/slow.sif": data}, delay=0.05, chunks=20)
    try:
        results = pull_in_two_processes(server.url("/slow.sif"), sha256_of(data), tmp_path, cache_dir)
    finally:
        server.close()
    assert server.gets == {"/slow.sif": 1}
    ((get_start, get_end),) = server.get_times["/slow.sif"]
    assert get_end - get_start > 0.5
    # Both started while the only download was still running: one waited on the lock and
    # then found the file done.
    assert all(r["start"] < get_end for r in results)
    assert results[0]["path"] == results[1]["path"]
    assert Path(results[0]["path"]).read_bytes() == data
    assert image_files(cache_dir) == [Path(results[0]["path"]).name]


def test_concurrent_oras_pulls_fetch_the_blob_once(registry, tmp_path, cache_dir):
    data = fake_sif(4_000_000, seed=31)
    sif = tmp_path / "big.sif"
    sif.write_bytes(data)
    registry.push_sif(sif, "shmbench/concurrent", "1")
    digest = sha256_of(data)
    results = pull_in_two_processes(f"oras://{registry.host}/shmbench/concurrent:1", digest, tmp_path, cache_dir)
    assert registry.blob_fetches("shmbench/concurrent", digest) == 1
    assert results[0]["path"] == results[1]["path"]
    assert file_digest(results[0]["path"]) == digest
