"""Singularity/Apptainer definition files: templating and parsing.

A definition file is a header of ``Key: value`` lines (``Bootstrap`` first) followed by
``%section`` blocks. shmbench parses them itself for two reasons: to build simple
(``Bootstrap: debootstrap``) recipes where Apptainer is not installed, and to hand Apptainer
a recipe that is already rendered, so both builders agree on build arguments and on where
``%files`` sources are found.

Templating follows Apptainer's ``--build-arg`` (Apptainer >= 1.2): ``{{ name }}`` is
replaced by the build argument ``name``, else by its default from the ``%arguments``
section (``name=value`` lines), else it is an error. Placeholders after a ``#`` comment
mark on their line are left alone, as Apptainer does. Rendering here also makes the
feature work with older Apptainer and Singularity releases that lack ``--build-arg``.

Deliberate differences from Apptainer, all documented in docs/containers.md:

* relative ``%files`` sources are resolved against the recipe's directory, not the
  current directory, so a recipe and its files can be moved together;
* one stage only (no ``Stage:`` / ``%files from``), no SCIF ``%app*`` sections;
* a build argument that the recipe never uses is an error (a typo would otherwise fall
  back silently to the default).

>>> d = parse_definition("Bootstrap: docker\\nFrom: {{ base }}\\n%post\\n  echo hi\\n",
...                      {"base": "debian:12"})
>>> d.bootstrap, d.header["from"], d.script("post").strip()
('docker', 'debian:12', 'echo hi')
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shmbench.errors import ImageError

__all__ = [
    "Definition",
    "Section",
    "render_template",
    "parse_arguments",
    "parse_definition",
    "read_definition",
    "SECTIONS",
]

#: The sections of a single-stage recipe, in the order Apptainer acts on them.
SECTIONS = ("arguments", "setup", "files", "post", "environment", "runscript", "startscript", "test", "labels", "help")
_APP_SECTIONS = ("appinstall", "applabels", "appfiles", "appenv", "apphelp", "apprun", "apptest", "appstart")
_LEGACY_SECTIONS = ("pre",)

# Apptainer's header keywords (all bootstrap agents); anything else is a typo.
_HEADER_KEYS = frozenset(
    {
        "bootstrap",
        "from",
        "osversion",
        "mirrorurl",
        "include",
        "updateurl",
        "stage",
        "fingerprints",
        "registry",
        "namespace",
        "library",
        "includecmd",
        "product",
        "user",
        "regcode",
        "productpgp",
        "setopt",
        "confurl",
        "authfile",
    }
)
_OTHERURL = re.compile(r"otherurl\d+")

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
#: a placeholder that was meant but not closed: "{{ name }" or "{{ name" at the line's end
_UNCLOSED = re.compile(r"\{\{\s*\w+\s*(?:\}(?!\})|$)", re.MULTILINE)
#: Apptainer's bootstrap agents: a value close to one of these but not one is a typo
BOOTSTRAP_AGENTS = (
    "library", "docker", "docker-archive", "docker-daemon", "oci", "oci-archive", "shub", "oras",
    "localimage", "yum", "zypper", "debootstrap", "arch", "busybox", "scratch",
)  # fmt: skip
# A '#' followed by something other than '!' (a shebang is not a comment).
_COMMENT_MARK = re.compile(r"#(?!!)")


@dataclass(frozen=True)
class Section:
    """One section: its name, the words after the name (``-c /bin/bash``), its body."""

    name: str
    args: str
    body: str


@dataclass(frozen=True)
class Definition:
    """A parsed, rendered single-stage definition file.

    Attributes:
        header: the header keywords, lower-cased (``bootstrap``, ``from``, ``osversion``...).
        sections: the sections by name (``%files`` apart); repeated sections are
            concatenated, as Apptainer does.
        files: the ``%files`` pairs ``(source, destination)``, destination defaulting to source.
        labels: the ``%labels`` pairs.
        text: the rendered recipe text (build arguments substituted).
        base_dir: where relative ``%files`` sources are found (the recipe's directory).
    """

    header: dict[str, str]
    sections: dict[str, Section]
    files: list[tuple[str, str]]
    labels: dict[str, str]
    text: str
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def bootstrap(self) -> str:
        return self.header["bootstrap"].lower()

    @property
    def include(self) -> list[str]:
        """The ``Include:`` packages (space- or comma-separated in the header)."""
        return [p for p in re.split(r"[\s,]+", self.header.get("include", "")) if p]

    def script(self, name: str) -> str:
        """A section's body, ``""`` when the recipe has none."""
        section = self.sections.get(name)
        return section.body if section else ""

    def source_paths(self) -> list[tuple[Path, str]]:
        """``%files`` sources as host paths (globs expanded, sorted) with their destinations.

        Raises:
            ImageError: a source that matches nothing.
        """
        result: list[tuple[Path, str]] = []
        for src, dst in self.files:
            pattern = src if os.path.isabs(src) else str(self.base_dir / src)
            if any(c in src for c in "*?["):
                matches = sorted(Path(p) for p in glob.glob(pattern))
            else:
                matches = [Path(pattern)] if os.path.lexists(pattern) else []
            if not matches:
                raise ImageError(
                    f"%files source {src!r} matches nothing (relative sources are looked up in {self.base_dir})"
                )
            result.extend((m, dst) for m in matches)
        return result

    def to_text(self, *, absolute_files: bool = True) -> str:
        """The recipe as text again, with ``%files`` sources made absolute.

        What Apptainer is handed: it resolves relative sources against its current
        directory, and this keeps it in step with shmbench's own builder.
        """
        out = []
        for key, value in self.header.items():
            out.append(f"{_HEADER_SPELLING.get(key, key.capitalize())}: {value}")
        out.append("")
        for name, section in self.sections.items():
            if name == "arguments":
                continue  # already applied; older Apptainer rejects the section
            out.append(f"%{name} {section.args}".rstrip())
            out.append(section.body.rstrip("\n"))
            out.append("")
        if self.files:
            out.append("%files")
            for src, dst in self.files:
                if absolute_files and not os.path.isabs(src):
                    src = str(self.base_dir / src)
                out.append(f"    {_quote_files_word(src)} {_quote_files_word(dst)}")
            out.append("")
        return "\n".join(out)


_HEADER_SPELLING = {
    "bootstrap": "Bootstrap",
    "from": "From",
    "osversion": "OSVersion",
    "mirrorurl": "MirrorURL",
    "include": "Include",
    "updateurl": "UpdateURL",
    "includecmd": "IncludeCmd",
    "setopt": "SetOpt",
    "confurl": "ConfURL",
}


def _quote_files_word(word: str) -> str:
    return f'"{word}"' if any(c.isspace() for c in word) else word


# ------------------------------------------------------------------------ templating


def parse_arguments(text: str) -> dict[str, str]:
    """The defaults of an ``%arguments`` section body: ``name=value`` lines.

    Values may be quoted (``name="a b"``); ``#`` lines are comments.
    """
    defaults = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"\w+", name):
            raise ImageError(f"%arguments: expected name=value, got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        defaults[name] = value
    return defaults


def render_template(
    text: str, build_args: Mapping[str, str] | None = None, defaults: Mapping[str, str] | None = None
) -> tuple[str, set[str]]:
    """Substitute ``{{ name }}`` placeholders; return the text and the names used.

    Raises:
        ImageError: a placeholder with neither a build argument nor a default.
    """
    build_args = dict(build_args or {})
    defaults = dict(defaults or {})
    used: set[str] = set()
    out = []
    last = 0
    for match in _PLACEHOLDER.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        if _COMMENT_MARK.search(text, line_start, match.start()):
            continue  # inside a comment: left as written
        name = match.group(1)
        if name in build_args:
            value = build_args[name]
        elif name in defaults:
            value = defaults[name]
        else:
            raise ImageError(
                f"build argument {name!r} is not defined: pass it as a build "
                f"argument or give it a default in the %arguments section"
            )
        out.append(text[last : match.start()])
        out.append(str(value))
        used.add(name)
        last = match.end()
    out.append(text[last:])
    return "".join(out), used


# --------------------------------------------------------------------------- parsing


def _split_blocks(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """(header text, [(section name, args, body)]) of a recipe."""
    header_lines: list[str] = []
    blocks: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip()
        if stripped.startswith("%") and len(stripped) > 1 and not stripped[1].isspace():
            word, _, args = stripped[1:].rstrip("\n").partition(" ")
            blocks.append((word.lower(), args.strip(), []))
        elif blocks:
            blocks[-1][2].append(line)
        else:
            header_lines.append(line)
    return "".join(header_lines), [(n, a, "".join(b)) for n, a, b in blocks]


def _parse_header(text: str, where: str) -> dict[str, str]:
    header: dict[str, str] = {}
    pending_key, pending_value = "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.split("#", 1)[0].rstrip()
        if pending_key:
            key, value = pending_key, pending_value + line
            pending_key = pending_value = ""
        else:
            key, sep, value = line.partition(":")
            if not sep:
                raise ImageError(f"{where}: header line {raw.strip()!r} is not 'Keyword: value'")
            key, value = key.strip().lower(), value.strip()
        if value.endswith("\\"):
            pending_key, pending_value = key, value[:-1]
            continue
        if key not in _HEADER_KEYS and not _OTHERURL.fullmatch(key):
            raise ImageError(f"{where}: unknown header keyword {key!r}")
        if key == "bootstrap" and "bootstrap" in header:
            raise ImageError(
                f"{where}: multi-stage definition files (several Bootstrap "
                f"lines) are not supported; build them with apptainer directly"
            )
        if not header and key != "bootstrap":
            raise ImageError(f"{where}: the header must start with 'Bootstrap:' (got {key!r})")
        header[key] = value
    if pending_key:
        raise ImageError(f"{where}: header ends in a line continuation")
    if "bootstrap" not in header:
        raise ImageError(f"{where}: no 'Bootstrap:' header")
    if not header["bootstrap"]:
        raise ImageError(f"{where}: 'Bootstrap:' has no value")
    agent = header["bootstrap"].lower()
    if agent not in BOOTSTRAP_AGENTS:
        import difflib

        close = difflib.get_close_matches(agent, BOOTSTRAP_AGENTS, n=1, cutoff=0.75)
        if close:  # a typo; an agent far from every known one is left to Apptainer to judge
            lineno = next(
                (i for i, raw in enumerate(text.splitlines(), 1) if raw.strip().lower().startswith("bootstrap")), 1
            )
            raise ImageError(
                f"{where}:{lineno}: unknown bootstrap agent {header['bootstrap']!r} -- did you mean {close[0]!r}?"
            )
    return header


def _parse_files(body: str, where: str) -> list[tuple[str, str]]:
    pairs = []
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=False, posix=True)
        except ValueError as exc:
            raise ImageError(f"{where}: bad %files line {line!r}: {exc}") from None
        if len(words) > 2:
            raise ImageError(
                f"{where}: %files line {line!r} has more than a source and a destination (quote paths with spaces)"
            )
        src = words[0]
        dst = words[1] if len(words) == 2 else src
        pairs.append((src, dst))
    return pairs


def _parse_labels(body: str) -> dict[str, str]:
    labels = {}
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        labels[key] = value.strip()
    return labels


def parse_definition(
    text: str,
    build_args: Mapping[str, str] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    where: str = "definition file",
) -> Definition:
    """Render and parse a single-stage definition file.

    Args:
        text: the recipe.
        build_args: values for ``{{ name }}`` placeholders.
        base_dir: where relative ``%files`` sources are looked up (default: the current
            directory; :func:`read_definition` passes the recipe's directory).
        where: how to name the recipe in error messages.

    Raises:
        ImageError: a malformed header or section, an unknown section, an undefined or an
            unused build argument.
    """
    _, raw_blocks = _split_blocks(text)
    defaults: dict[str, str] = {}
    for name, _args, body in raw_blocks:
        if name == "arguments":
            defaults.update(parse_arguments(body))
    for match in _UNCLOSED.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        if _COMMENT_MARK.search(text, line_start, match.start()):
            continue
        line = text.count("\n", 0, match.start()) + 1
        raise ImageError(
            f"{where}:{line}: {match.group(0).strip()!r} is an unclosed build-argument placeholder "
            "(write {{ name }})"
        )
    rendered, used = render_template(text, build_args, defaults)
    unused = sorted(set(build_args or {}) - used)
    if unused:
        raise ImageError(
            f"{where}: build argument(s) {', '.join(unused)} are not used by "
            f"this recipe (it uses: {', '.join(sorted(used)) or 'none'})"
        )

    header_text, blocks = _split_blocks(rendered)
    header = _parse_header(header_text, where)
    sections: dict[str, Section] = {}
    files: list[tuple[str, str]] = []
    for name, args, body in blocks:
        if name in _APP_SECTIONS:
            raise ImageError(
                f"{where}: SCIF app sections (%{name}) are not supported; build this recipe with apptainer directly"
            )
        if name not in SECTIONS and name not in _LEGACY_SECTIONS:
            raise ImageError(f"{where}: unknown section %{name}")
        if name == "files":
            if args:
                raise ImageError(f"{where}: '%files {args}' (copying from another stage) is not supported")
            files.extend(_parse_files(body, where))
            continue
        previous = sections.get(name)
        if previous is not None:
            body = previous.body + body
            args = previous.args or args
        sections[name] = Section(name=name, args=args, body=body)
    return Definition(
        header=header,
        sections=sections,
        files=files,
        labels=_parse_labels(sections["labels"].body) if "labels" in sections else {},
        text=rendered,
        base_dir=Path(base_dir).absolute() if base_dir else Path.cwd(),
    )


def read_definition(path: str | os.PathLike[str], build_args: Mapping[str, str] | None = None) -> Definition:
    """Read, render and parse the recipe at ``path``; ``%files`` sources are relative to it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImageError(f"definition file not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise ImageError(f"cannot read definition file {path}: {exc}") from None
    return parse_definition(text, build_args, base_dir=path.absolute().parent, where=str(path))
