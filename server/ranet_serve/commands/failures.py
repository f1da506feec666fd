"""How a `ranet` command ends on a user's mistake: one `error:` line and exit status 1, no traceback.

A missing or unreadable file, a config that does not validate, an unwritable `--out`, a dataset that
is not there, a port already taken: each is something the user fixes from the message, and a
traceback of the library's internals only hides it. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup


def is_user_error(exc: BaseException) -> bool:
    """A failure the user can fix from its message (imports lazily: `ranet --help` stays instant)."""
    from ranet_serve.data.datasets import DatasetError
    from ranet_serve.errors import RanetServeError

    # pydantic's ValidationError and CheckpointError are ValueErrors; socket and file errors OSErrors.
    return isinstance(exc, RanetServeError | DatasetError | ValueError | OSError)


def describe(exc: BaseException) -> str:
    """The message of `exc` on one line; a pydantic error as `field: problem` without its doc links."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        problems = (
            f"{'.'.join(str(part) for part in error['loc']) or exc.title}: {error['msg']}"
            for error in exc.errors()
        )
        return "; ".join(problems)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


class RanetCommands(TyperGroup):
    """The `ranet` command group: a user's mistake in any command ends as one `error:` line, exit 1."""

    # Typer passes its own (vendored) click's context: typed loosely to match any version.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not is_user_error(exc):
                raise
            console = Console(stderr=True, soft_wrap=True)  # one line, however narrow the terminal
            console.print(f"[red]error:[/red] {escape(describe(exc))}", highlight=False)
            raise typer.Exit(1) from exc
