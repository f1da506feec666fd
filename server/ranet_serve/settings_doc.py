"""The settings reference, generated from `Settings` so it cannot drift from the code.

Two renderings of the same rows (environment variable, default, description): the Markdown table in
docs/operations.md, between the `settings-table` marker comments, and the settings list at the end of
`ranet serve --help`. `make docs` (`python -m ranet_serve.settings_doc docs/operations.md`) rewrites the
table; `--check` only says whether it is current, and the test suite fails when it is not.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic.fields import FieldInfo

from ranet_serve.settings import Settings

START_MARKER = "<!-- settings-table:start -->"
END_MARKER = "<!-- settings-table:end -->"
_GENERATED_NOTE = (
    "<!-- generated from ranet_serve.settings.Settings by `make docs`: edit the descriptions there -->"
)


@dataclass(frozen=True)
class SettingDoc:
    """One setting as the reference shows it."""

    name: str  # the field of Settings
    env: str  # its environment variable
    default: str  # as it would be written in the environment; "unset" for None
    choices: tuple[str, ...]  # the allowed values of a Literal setting, else ()
    description: str


def setting_docs() -> list[SettingDoc]:
    """Every field of `Settings`, in declaration order; raises ValueError for one without a description."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    docs = []
    for name, info in Settings.model_fields.items():
        if not info.description:
            raise ValueError(f"setting {name!r} has no description: give it Field(description=...)")
        docs.append(
            SettingDoc(
                name=name,
                env=f"{prefix}{name}".upper(),
                default=_env_value(info.get_default(call_default_factory=True)),
                choices=_choices(info),
                description=info.description,
            )
        )
    return docs


def settings_markdown() -> str:
    """The Markdown table of every setting: variable, default, what it does."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for doc in setting_docs():
        default = "unset" if doc.default == "unset" else f"`{doc.default}`"
        text = _markdown_text(doc.description)
        if doc.choices:
            text += " One of " + ", ".join(f"`{choice}`" for choice in doc.choices) + "."
        rows.append(f"| `{doc.env}` | {default} | {text.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


def with_settings_table(document: str) -> str:
    """`document` with the text between the settings-table markers replaced by the generated table.

    Raises ValueError when the markers are missing or out of order.
    """
    start = document.find(START_MARKER)
    end = document.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"no {START_MARKER} ... {END_MARKER} block")
    head = document[: start + len(START_MARKER)]
    return f"{head}\n{_GENERATED_NOTE}\n{settings_markdown()}{document[end:]}"


def settings_epilog(options: Mapping[str, str]) -> str:
    """Plain text listing every setting for a command's help, one paragraph each.

    `options` maps a setting's name to the command-line option that overrides it, where there is one.
    """
    paragraphs = ["Settings: environment variables, overridden by the options above where there is one."]
    for doc in setting_docs():
        option = f", option {options[doc.name]}" if doc.name in options else ""
        choices = f" (one of: {', '.join(doc.choices)})" if doc.choices else ""
        paragraphs.append(f"{doc.env} (default {doc.default}{option}): {doc.description}{choices}.")
    return "\n\n".join(paragraphs)


def _env_value(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _choices(info: FieldInfo) -> tuple[str, ...]:
    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(value) for value in typing.get_args(annotation))
    return ()


def _markdown_text(description: str) -> str:
    """A description as table text: setting and metric names, and paths with <placeholders>, as code."""
    text = re.sub(r"\b(RANET_[A-Z0-9_]+|ranet_[a-z0-9_]+)\b", r"`\1`", description)
    return re.sub(r"(\S*<\w+>\S*)", r"`\1`", text) + "."


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the settings table of each document (`--check`: exit 1 if any is out of date instead)."""
    parser = argparse.ArgumentParser(prog="python -m ranet_serve.settings_doc", description=main.__doc__)
    parser.add_argument("documents", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for path in args.documents:
        text = path.read_text()
        updated = with_settings_table(text)
        if updated != text:
            stale.append(path)
            if not args.check:
                path.write_text(updated)
    for path in stale:
        print(f"{path}: settings table {'out of date' if args.check else 'rewritten'}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
