"""The command-line reference (docs/cli.md), rendered from the parsers themselves.

``python -m shmbench.cli.reference > docs/cli.md`` regenerates it; a test fails when the
file and the parsers drift apart. Rendered at a fixed width, whatever the terminal.
"""

from __future__ import annotations

import argparse
from functools import partial

from shmbench.cli.util import Formatter

__all__ = ["render", "WIDTH"]

WIDTH = 96


def render() -> str:
    from shmbench.cli import build_parser

    parser = build_parser()
    parser.formatter_class = partial(Formatter, width=WIDTH)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [
        "# Command-line reference",
        "",
        "Generated from the parsers by `python -m shmbench.cli.reference > docs/cli.md`",
        "(`tests/test_cli.py` fails when this file and the parsers drift apart).",
        "",
        "```",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, p in sub.choices.items():
        p.formatter_class = partial(Formatter, width=WIDTH)
        parts += ["", f"## shmbench {name}", "", "```", p.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
