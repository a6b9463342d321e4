"""shmbench: RL environments and DAC benchmarks in rootless containers, stepped from the host
through shared memory at close to native speed.

    shmbench run --experiment exp:0.01 --agent random --episodes 10 --seed 42 --out DIR
    shmbench sweep --experiment ID --seeds 0-99 --out DIR [--executor slurm] | status | resume | collect
    shmbench experiments | pull ID | images | build RECIPE -o IMAGE.sif | push IMAGE.sif oras://...  [--record ID]
    shmbench demo | doctor | benchmarks | gc
    shmbench bench [--quick] | report BENCH.json ... -o DIR

One module per group of commands registers its own parsers (:mod:`~shmbench.cli.run`, :mod:`~shmbench.cli.sweep`,
:mod:`~shmbench.cli.images`, :mod:`~shmbench.cli.system`, :mod:`~shmbench.cli.perf`); each
command imports what it needs only when it runs, so ``shmbench gc`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from shmbench.cli import images, perf, run, sweep, system

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from shmbench import __version__
    from shmbench.cli.util import Formatter

    parser = argparse.ArgumentParser(
        prog="shmbench",
        description=__doc__.split("\n\n")[0],
        epilog="'shmbench COMMAND --help' explains a command, with examples. Docs: docs/cli.md",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"shmbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    system.register_demo(sub)
    run.register(sub)
    sweep.register(sub)
    images.register(sub)
    system.register(sub)
    perf.register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one line for people, no source line."""
    text = " ".join(str(message).split())
    text = text[len("shmbench: ") :] if text.startswith("shmbench: ") else text
    print(f"shmbench: warning: {text}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    import warnings

    from shmbench.errors import ShmbenchError

    warnings.showwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ShmbenchError as exc:
        print(f"shmbench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shmbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
