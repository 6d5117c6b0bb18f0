"""The ``hutch`` command: sandboxes from the shell, built on the public sync SDK.

``hutch serve`` and ``hutch doctor`` live in ``hutch.cli.serve`` (they pull in the server);
they are loaded only when named or listed, so the client commands start fast and work on
a machine without the server's dependencies.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Dict, List, Optional, Tuple

import click

from hutch.cli import code, files, keys, logs, run, sandboxes, templates, terminal
from hutch.cli._common import Context

_LAZY = {"serve": "hutch.cli.serve", "doctor": "hutch.cli.serve"}


class HutchGroup(click.Group):
    """A group whose server commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        command = super().get_command(ctx, name)
        if command is not None or name not in _LAZY:
            return command
        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as exc:
            return _unavailable(name, exc)
        return getattr(module, name, None)


def _unavailable(name: str, exc: ImportError) -> click.Command:
    @click.command(name, help=f"(unavailable here: {exc})",
                   context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: Tuple[str, ...]) -> None:
        raise click.ClickException(f"'hutch {name}' is not available: {exc}")

    return command


@click.group(cls=HutchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="HUTCH_URL", default=None, metavar="URL",
              help="hutch server URL [env HUTCH_URL; default http://127.0.0.1:7711]")
@click.option("--api-key", envvar="HUTCH_API_KEY", default=None, metavar="KEY",
              help="API key [env HUTCH_API_KEY; as root on the server host: the admin key]")
@click.version_option(package_name="hutch", prog_name="hutch")
@click.pass_context
def cli(ctx: click.Context, url: Optional[str], api_key: Optional[str]) -> None:
    """hutch: isolated Linux sandboxes for AI agents."""
    ctx.obj = Context(url, api_key)


for _command in (sandboxes.sandbox, sandboxes.ls, sandboxes.kill, terminal.exec_,
                 terminal.shell, files.cp, run.run, code.run_code, logs.logs, keys.keys,
                 templates.template):
    cli.add_command(_command)
cli.add_command(sandboxes.create, "create")  # the shortcut for `hutch sandbox create`


def main() -> None:
    cli(prog_name="hutch")


__all__ = ["cli", "main"]
