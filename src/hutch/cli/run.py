"""``hutch run``: one command in a fresh sandbox that is gone afterwards.

Create, run with the output streamed, kill; the exit status is the command's. The sandbox is
killed however the run ends: the command exiting, an error, Ctrl-C, or a SIGTERM/SIGHUP to
``hutch`` itself (each turned into an exception so the cleanup below runs).
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Optional, Tuple

import click

from hutch import errors
from hutch.cli._common import Context, pass_ctx, run_guarded
from hutch.cli.sandboxes import create_sandbox, creation_options
from hutch.cli.terminal import stream_command
from hutch.sdk import Sandbox

# The shell's convention for "ended by signal N": 128 + N.
INTERRUPTED_EXIT = 128 + signal.SIGINT
_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """``hutch`` was asked to stop by a signal other than SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(signum)


@click.command("run", context_settings={"ignore_unknown_options": True})
@creation_options(timeout=3600)
@click.option("-u", "--user", default=None, help="run as this user (default: the template's)")
@click.option("-w", "--cwd", default=None, help="working directory")
@click.option("--command-timeout", type=float, default=0, show_default=True,
              help="seconds before the command is killed (0: only the sandbox's timeout)")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_ctx
def run(ctx: Context, argv: Tuple[str, ...], user: Optional[str], cwd: Optional[str],
        command_timeout: float, **options: Any) -> None:
    """Run a command in a new sandbox, then kill it: `hutch run [OPTIONS] -- CMD [ARGS...]`.

    One argument is a shell command line (`hutch run -- 'ls | wc -l'`); several are run as
    given. Output streams as it is produced; the exit status is the command's.
    """
    previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        sys.exit(run_guarded(lambda: _run(ctx, argv, user, cwd, command_timeout, options)))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(ctx: Context, argv: Tuple[str, ...], user: Optional[str], cwd: Optional[str],
         command_timeout: float, options: dict) -> int:
    sbx: Optional[Sandbox] = None
    try:
        # A stop signal during the create request is held until the answer is in: acted on
        # at once, it would leave a sandbox whose id never arrived.
        held: list = []
        saved = {s: signal.signal(s, lambda signum, _: held.append(signum)) for s in _STOPS}
        try:
            sbx = create_sandbox(ctx, **options)
        finally:
            for signum, handler in saved.items():
                signal.signal(signum, handler)
        if held:
            return 128 + held[0]
        return stream_command(sbx, argv, envs=None, user=user, cwd=cwd,
                              timeout=command_timeout)
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    except Stopped as stop:
        return 128 + stop.signum
    finally:
        _discard(sbx)


def _discard(sbx: Optional[Sandbox]) -> None:
    """Kill the sandbox, not to be interrupted by a second Ctrl-C (that would leak it)."""
    if sbx is None:
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # Through a connection of its own: the interrupt may have struck the sandbox's own
        # client mid-request, in the middle of its connection pool's bookkeeping.
        cfg = sbx.connection_config
        type(sbx).kill(sandbox_id=sbx.sandbox_id, api_key=cfg.api_key, url=cfg.url,
                       request_timeout=60)
    except errors.HutchError as exc:
        click.echo(f"hutch: could not kill sandbox {sbx.sandbox_id}: {exc}", err=True)
    finally:
        sbx.close()
        signal.signal(signal.SIGINT, previous)
