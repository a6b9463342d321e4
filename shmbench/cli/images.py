"""``shmbench experiments``, ``pull``, ``images`` and ``build``: records and images."""

from __future__ import annotations

import argparse
import os

from shmbench.cli.util import human_size

__all__ = ["register", "cmd_build", "cmd_experiments", "cmd_images", "cmd_pull"]


def _build_args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"shmbench: --build-arg needs KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def cmd_build(args: argparse.Namespace) -> int:
    from shmbench.images.build import build

    out = build(args.recipe, args.output, build_args=_build_args(args.build_arg), builder=args.builder)
    print(f"built {out}")
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from shmbench.experiments import list_experiments

    records = list_experiments()
    if not records:
        print("no experiments found")
        return 0
    width = max(len(r.identifier) for r in records)
    for r in records:
        image = r.image.ref if r.image is not None else "(host / any runtime)"
        print(f"{r.identifier:{width}s}  {r.benchmark:28s} {image}")
        if args.verbose:
            print(f"{'':{width}s}  hash {r.canonical_hash()}  source {r.source}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from shmbench.images.fetch import pull, pull_spec

    if args.digest or "://" in args.target or os.path.exists(args.target):
        path = pull(args.target, args.digest, offline=args.offline)
    else:
        from shmbench.experiments import resolve

        record = resolve(args.target)
        if record.image is None:
            print(f"{record.identifier} names no image: it runs on the host's software")
            return 0
        path = pull_spec(record.image, offline=args.offline)
    print(path)
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from shmbench.images.store import list_images, remove_image

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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiments", help="list known experiment records")
    p.add_argument("-v", "--verbose", action="store_true", help="show hashes and sources")
    p.set_defaults(func=cmd_experiments)

    p = sub.add_parser("pull", help="download an experiment's image (or an image reference) into the cache")
    p.add_argument("target", help="an experiment id (exp:0.01) or an image reference")
    p.add_argument("--digest", help="sha256 digest to verify an image reference against")
    p.add_argument("--offline", action="store_true", help="use the cache only")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("images", help="list (or remove) cached images")
    p.add_argument("--remove", nargs="+", metavar="DIGEST")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("build", help="build a SIF image from a Singularity definition file")
    p.add_argument("recipe")
    p.add_argument("-o", "--output", required=True, help="the SIF file to write")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--builder",
        choices=["auto", "apptainer", "native"],
        default="auto",
        help="native: debootstrap + bwrap + siftool, no Apptainer (root only)",
    )
    p.set_defaults(func=cmd_build)
