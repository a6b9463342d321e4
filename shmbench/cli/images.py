"""``shmbench experiments``, ``pull``, ``push``, ``images``, ``build``, ``inspect``, ``shell``:
records and images."""

from __future__ import annotations

import argparse
import os
import sys

from shmbench.cli.util import add_command, human_size

__all__ = ["register", "cmd_build", "cmd_experiments", "cmd_images", "cmd_pull", "cmd_push"]


def _build_args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"shmbench: --build-arg needs KEY=VALUE, got {pair!r}")
        # a relative path names a file in the current directory, as Apptainer reads it
        out[key] = os.path.abspath(value) if value and not os.path.isabs(value) and os.path.exists(value) else value
    return out


def cmd_build(args: argparse.Namespace) -> int:
    from shmbench.images.build import build

    out = build(
        args.recipe, args.output, build_args=_build_args(args.build_arg), builder=args.builder, verbose=args.verbose
    )
    print(f"built {out}")
    from shmbench.images.manifest import read_manifest
    from shmbench.images.store import file_digest

    print(f"digest {file_digest(out)}")
    if args.lock:
        from pathlib import Path

        from shmbench.images.pinned import write_lock

        lock = write_lock(out, Path(args.lock))
        print(
            f"lock {args.lock}: {len(lock['debian_packages'] or {})} Debian and {len(lock['python_packages'] or {})} Python packages"
        )
    elif read_manifest(out) is None:
        print("(no manifest: this builder does not write one, so no --lock can be written from it)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """``shmbench push``: publish a SIF to an OCI registry; ``--record`` pins it in a record."""
    import dataclasses
    from pathlib import Path

    from shmbench.errors import ShmbenchError
    from shmbench.images.pinned import find_recipe
    from shmbench.images.publish import push
    from shmbench.images.refs import ImageSpec
    from shmbench.images.store import file_digest

    try:
        base = None
        if args.record:  # resolved first: a typo fails before the upload
            from shmbench.experiments import resolve

            base = resolve(args.source or args.record)
        digest = push(args.image, args.ref, insecure=True if args.insecure else None, progress=sys.stderr.isatty())
        print(f"pushed {args.image} as {args.ref}\ndigest {digest}")
        if base is None:
            return 0
        from shmbench.experiments.records import write_user_record

        note = f"image {args.ref} ({digest[:19]}...)"
        # the recipe it came from, pinned as a field: a run builds it where the reference
        # cannot be pulled (given here, or kept from the record it starts from)
        kept = base.image if base.image is not None and base.image.recipe else None
        recipe = str(Path(args.recipe).absolute()) if args.recipe else (kept.recipe if kept else None)
        if recipe:
            note += f", built from {Path(recipe).name} ({file_digest(find_recipe(recipe))[:19]}...)"
        record = dataclasses.replace(
            base,
            identifier=args.record,
            image=ImageSpec(
                args.ref,
                digest,
                recipe=recipe,
                build_args=kept.build_args if kept and not args.recipe else (),
                lock=kept.lock if kept and not args.recipe else None,
            ),
            description=f"{base.description}; {note}" if base.description else note,
        )
        path = write_user_record(record, Path(args.records_dir) if args.records_dir else None, force=args.force)
    except (ShmbenchError, OSError) as exc:
        print(f"shmbench push: error: {exc}", file=sys.stderr)
        return 1
    print(f"record {args.record} -> {path}\nrun it: shmbench run --experiment {args.record}")
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from shmbench.experiments import list_experiments

    records = list_experiments()
    if not records:
        print("no experiments found")
        return 0
    width = max(len(r.identifier) for r in records)
    for r in records:
        image = r.image.what if r.image is not None else "(host / any runtime)"
        print(f"{r.identifier:{width}s}  {r.benchmark:28s} {image}")
        if args.verbose:
            print(f"{'':{width}s}  hash {r.canonical_hash()}  source {r.source}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from shmbench.images.fetch import pull

    if args.digest or "://" in args.target or os.path.exists(args.target):
        path = pull(args.target, args.digest, offline=args.offline)
    else:
        from shmbench.experiments import resolve
        from shmbench.images.pinned import obtain

        record = resolve(args.target)
        if record.image is None:
            print(f"{record.identifier} names no image: it runs on the host's software")
            return 0
        # pulled and verified, or built from the record's recipe and compared with its lock
        got = obtain(record.image, offline=args.offline, require_pinned=args.require_pinned)
        path = got.path
        print(f"{got.how}: {got.digest}" + ("" if got.matches else f" (pinned: {got.pinned_digest})"), file=sys.stderr)
    print(path)
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from shmbench.images.store import list_images, prune_cache, remove_image

    if args.prune:
        removed = prune_cache()
        for path, size in removed:
            print(f"removed {path} ({human_size(size)})")
        print(f"pruned {len(removed)} unpacked tree(s) and built image(s), {human_size(sum(s for _, s in removed))}")
        return 0
    if args.remove:
        for digest in args.remove:
            print(("removed " if remove_image(digest) else "not cached: ") + digest)
        return 0
    images = list_images()
    total = 0
    for img in images:
        total += img.size
        print(f"{img.digest}  {human_size(img.size):>10s}  {img.last_used:%Y-%m-%d %H:%M}  {img.path}")
    print(f"{len(images)} image(s), {human_size(total)}")
    return 0


#: the largest definition file or label set ``inspect`` reads from an (untrusted) image
_INSPECT_MAX = 1 << 20


def cmd_inspect(args: argparse.Namespace) -> int:
    """What an image is (its SIF header, objects, definition file, labels) and what runs in
    it: a server started in it by the runtime a run would use reports its Python, numpy,
    gymnasium and shmbench."""
    import datetime
    import json
    from pathlib import Path

    from shmbench.errors import ShmbenchError, sanitize
    from shmbench.images.sif import DataType, read_sif
    from shmbench.images.store import file_digest

    def small(d) -> str:
        """A data object the image's author wrote: bounded, without terminal control codes."""
        if d.size > _INSPECT_MAX:
            return f"<{human_size(d.size)}: too large to show>"
        return sanitize(sif.read_object(d).decode("utf-8", "replace"))

    path = Path(args.image)
    if not path.exists():
        print(f"shmbench inspect: error: no image at {path}", file=sys.stderr)
        return 2
    if path.is_file():
        sif = read_sif(path)
        h = sif.header
        created = datetime.datetime.fromtimestamp(h.created, tz=datetime.timezone.utc)
        print(f"{path}: SIF {h.version}, {h.arch}, {human_size(sif.file_size)}, created {created:%Y-%m-%d %H:%M} UTC")
        print(f"  digest {file_digest(path)}")
        for d in sif.descriptors:
            kind = DataType(d.datatype).name.lower() if d.datatype in DataType._value2member_map_ else hex(d.datatype)
            print(f"  object {d.id}: {kind}, {human_size(d.size)}" + (f" ({sanitize(d.name)})" if d.name else ""))
        for d in sif.of_type(DataType.LABELS):
            try:
                labels = json.loads(small(d))
            except ValueError:
                labels = {}
            for key, value in sorted(labels.items()) if isinstance(labels, dict) else []:
                print(f"  label {sanitize(str(key))}: {sanitize(str(value))}")
        _print_manifest(sif, args.packages)
        for d in sif.of_type(DataType.DEFFILE):
            text = small(d)
            print("  definition file:")
            for line in text.splitlines()[: args.deffile_lines]:
                print(f"    {line}")
    else:
        print(f"{path}: a directory (a sandbox root filesystem)")
    import shmbench

    try:
        with shmbench.make("CartPole-v1", runtime=args.runtime, image=str(path), start_timeout=60) as env:
            info = env.server_info
            served = getattr(env.runtime, "serve_from", "image")
            print(
                sanitize(
                    f"  inside (via the {env.runtime.name} runtime): python {info.get('python')}, numpy "
                    f"{info.get('numpy')}, gymnasium {info.get('gymnasium')}, shmbench {info.get('shmbench')}"
                    + (" (the host's, serving the image)" if served == "host" else " (the image's own)")
                )
            )
    except (ShmbenchError, OSError, ValueError) as exc:
        print(f"  inside: no server could run in it ({' '.join(str(exc).split())[:300]})")
        return 1
    return 0


def _print_manifest(sif, packages: bool) -> None:
    """The manifest a native build wrote into the image (untrusted: bounded, escapes stripped)."""
    import json

    from shmbench.errors import ImageError, sanitize
    from shmbench.images.manifest import read_manifest

    try:
        manifest = read_manifest(sif)
    except ImageError as exc:
        print(f"  manifest: unreadable ({exc})")
        return
    if manifest is None:
        print("  manifest: none (not built by shmbench)")
        return
    recipe = manifest.get("recipe") or {}
    debs, pips = manifest.get("debian_packages") or {}, manifest.get("python_packages") or {}
    lines = [
        f"recipe {recipe.get('name')} (digest {recipe.get('digest')})",
        f"build args {json.dumps(manifest.get('build_args'), sort_keys=True)}",
        f"bootstrap {json.dumps(manifest.get('bootstrap'), sort_keys=True)}",
        f"SOURCE_DATE_EPOCH {manifest.get('source_date_epoch')}, builder {manifest.get('builder')}",
        f"python {manifest.get('python')}, shmbench inside: {manifest.get('shmbench') or 'none'}",
        "python packages: " + ", ".join(f"{k} {v}" for k, v in sorted(pips.items())),
        f"debian packages: {len(debs)}" + ("" if packages else " (--packages lists them)"),
    ]
    if packages:
        lines += [f"  {k} {v}" for k, v in sorted(debs.items())]
    print("  manifest:")
    for line in lines:
        print("    " + sanitize(str(line)))


def cmd_shell(args: argparse.Namespace) -> int:
    """A shell (or ``-c COMMAND``) in the sandbox a server of the image would get."""
    from pathlib import Path

    from shmbench.errors import ShmbenchError
    from shmbench.runtimes.base import Launch
    from shmbench.runtimes.selection import get_runtime

    try:
        runtime = get_runtime(args.runtime, image=args.image)
    except (ShmbenchError, OSError, ValueError) as exc:
        print(f"shmbench shell: error: {exc}", file=sys.stderr)
        return 2
    program = ["/bin/sh", *(["-c", args.command] if args.command else [])]
    if runtime.name in ("bwrap", "apptainer"):  # their command() takes the program to run
        launch = Launch(name="shell", fds={}, log_fd=-1, log_path=Path(os.devnull))
        argv, env = runtime.command(launch, program=program)  # type: ignore[call-arg]
    else:
        print(f"shmbench shell: error: the {runtime.name} runtime has no sandbox to open a shell in", file=sys.stderr)
        return 2
    import subprocess

    return subprocess.run(argv, env=env).returncode


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "experiments",
        help="list known experiment records",
        description=(
            "List the experiment records a run can name: from $SHMBENCH_EXPERIMENTS, the user's\n"
            "directory, $SHMBENCH_EXPERIMENT_INDEX and the package, first found wins."
        ),
        examples=("shmbench experiments", "shmbench experiments -v"),
        func=cmd_experiments,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show hashes and sources")

    p = add_command(
        sub,
        "pull",
        help="download an experiment's image (or an image reference) into the cache",
        description=(
            "Download an image into the cache and verify it against its sha256 digest; for an\n"
            "experiment whose image is pinned by a recipe, build it (once) and compare it with the lock."
        ),
        examples=(
            "shmbench pull exp:0.01",
            "shmbench pull oras://registry.example.org/shmbench/light:1 --digest sha256:...",
        ),
        func=cmd_pull,
    )
    p.add_argument("target", help="an experiment id (exp:0.01) or an image reference")
    p.add_argument("--digest", help="sha256 digest to verify an image reference against")
    p.add_argument("--offline", action="store_true", help="use the cache only")
    p.add_argument("--require-pinned", action="store_true", help="fail when a built image is not the one its lock pins")

    p = add_command(
        sub,
        "push",
        help="publish a SIF image to an OCI registry (and pin it in an experiment record)",
        description=(
            "Push a SIF file to an OCI registry as Apptainer does (one layer of the SIF media\n"
            "type), check the registry's manifest names the file's sha256, and print it. With\n"
            "--record ID, write an experiment record pinning the reference and digest (copied\n"
            "from --from, default ID itself) into the user's records, which override shipped ones.\n"
            "Credentials: ~/.docker/config.json (docker login / oras login)."
        ),
        examples=(
            "shmbench push light.sif oras://registry.example.org/me/light:1",
            "shmbench push light.sif oras://127.0.0.1:5000/me/light:1 --record exp:0.01 --recipe recipes/light.def",
            "shmbench push mine.sif oras://ghcr.io/me/mine:2 --record exp:mine --from exp:0.01",
        ),
        func=cmd_push,
    )
    p.add_argument("image", help="the SIF file")
    p.add_argument("ref", help="oras://HOST[:PORT]/REPO:TAG")
    p.add_argument("--insecure", action="store_true", help="plain HTTP (default: only to a loopback registry)")
    p.add_argument("--record", metavar="ID", help="write an experiment record ID pinning the pushed image")
    p.add_argument("--from", dest="source", metavar="ID", help="the record to copy (default: --record's ID)")
    p.add_argument("--recipe", metavar="FILE", help="the recipe the image was built from, named in the record")
    p.add_argument("--records-dir", metavar="DIR", help="where the record goes (default: the user's records)")
    p.add_argument("--force", action="store_true", help="replace an existing record file")

    p = add_command(
        sub,
        "images",
        help="list (or remove) cached images; prune unpacked trees and built images",
        description=(
            "List the images in the cache (digest, size, last use, path), or remove some; --prune\n"
            "removes what is made again when needed -- trees unpacked from SIFs, images built from\n"
            "recipes -- except those a running server uses."
        ),
        examples=("shmbench images", "shmbench images --remove sha256:0123abcd...", "shmbench images --prune"),
        func=cmd_images,
    )
    p.add_argument("--remove", nargs="+", metavar="DIGEST", help="remove these images from the cache")
    p.add_argument("--prune", action="store_true", help="remove unpacked trees and built images nothing uses")

    p = add_command(
        sub,
        "inspect",
        help="what an image holds and what runs in it",
        description=(
            "Show an image: its SIF header, data objects, labels and definition file, then start\n"
            "a server in it through the runtime a run would use and report the Python, numpy,\n"
            "gymnasium and shmbench it runs. Exits 1 when no server could run in it."
        ),
        examples=("shmbench inspect light.sif", "shmbench inspect ~/.cache/shmbench/unpacked/0123... --runtime bwrap"),
        func=cmd_inspect,
    )
    p.add_argument("image", help="a SIF file or a sandbox directory")
    p.add_argument("--runtime", default="auto", help="the runtime that starts the server in it")
    p.add_argument("--deffile-lines", type=int, default=40, metavar="N", help="lines of the definition file shown")
    p.add_argument("--packages", action="store_true", help="list every Debian package the manifest names")

    p = add_command(
        sub,
        "shell",
        help="a shell in the sandbox an image's server would get",
        description=(
            "Open /bin/sh (or run -c COMMAND) in the sandbox a server of IMAGE would get: the same\n"
            "runtime, namespaces, read-only root and private /tmp (no IMAGE: the host's system,\n"
            "read-only). The session is detached from the terminal's job control, as servers are\n"
            "(a program in it must not type into your terminal): no Ctrl-Z, no fg."
        ),
        examples=(
            "shmbench shell light.sif",
            "shmbench shell light.sif -c 'python3 -c \"import numpy; print(numpy.__version__)\"'",
        ),
        func=cmd_shell,
    )
    p.add_argument("image", nargs="?", help="a SIF file or a sandbox directory (default: the host's system)")
    p.add_argument("-c", "--command", help="run this shell command instead of an interactive shell")
    p.add_argument("--runtime", default="auto", help="the runtime whose sandbox it is")

    p = add_command(
        sub,
        "build",
        help="build a SIF image from a Singularity definition file",
        description=(
            "Build a SIF image from a definition file: with Apptainer where it is installed, else\n"
            "natively (debootstrap, bubblewrap and siftool; root only)."
        ),
        examples=(
            "shmbench build recipes/light.def -o light.sif",
            "shmbench build recipes/light.def -o light.sif --lock recipes/light.lock.json",
            "shmbench build recipes/dacbench.def -o dacbench.sif --build-arg wheel=dist/shmbench.whl",
        ),
        func=cmd_build,
    )
    p.add_argument("recipe", help="the definition file (.def)")
    p.add_argument("-o", "--output", required=True, help="the SIF file to write")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="stream the build's output (default: one line per stage)"
    )
    p.add_argument(
        "--build-arg", action="append", default=[], metavar="KEY=VALUE", help="a {{ KEY }} of the recipe (repeatable)"
    )
    p.add_argument(
        "--lock",
        metavar="FILE",
        help="also write the image's lock (digest and package versions) for a record's image.lock",
    )
    p.add_argument(
        "--builder",
        choices=["auto", "apptainer", "native"],
        default="auto",
        help="native: debootstrap + bwrap + siftool, no Apptainer (root only)",
    )
