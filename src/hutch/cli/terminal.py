"""``hutch exec`` (run one command, output streamed, exit status passed through) and
``hutch shell`` (an interactive terminal in the sandbox)."""

from __future__ import annotations

import os
import select
import shlex
import signal
import sys
import termios
import tty
from typing import Any, Optional, Tuple

import click

from hutch import errors
from hutch.cli._common import Context, parse_pairs, pass_ctx, run_guarded
from hutch.sdk import PtySize, Sandbox

# A command killed by its deadline exits like `timeout(1)` does.
TIMEOUT_EXIT = 124


def command_line(argv: Tuple[str, ...]) -> str:
    """One argument is a shell string (`hutch exec ID -- 'ls | wc'`); several are quoted."""
    return argv[0] if len(argv) == 1 else shlex.join(argv)


def _write(stream: Any) -> Any:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_id")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-u", "--user", default=None, help="run as this user (default: the template's)")
@click.option("-w", "--cwd", default=None, help="working directory")
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE")
@click.option("--timeout", type=float, default=0, show_default=True,
              help="seconds before the command is killed (0: never)")
@pass_ctx
def exec_(ctx: Context, sandbox_id: str, argv: Tuple[str, ...], user: Optional[str],
          cwd: Optional[str], env: Tuple[str, ...], timeout: float) -> None:
    """Run a command in a sandbox: `hutch exec ID -- CMD [ARGS...]`.

    Output streams as it is produced; the exit status is the command's.
    """
    envs = parse_pairs(env, "--env") or None

    def go() -> int:
        sbx = Sandbox.connect(sandbox_id, **ctx.opts)
        try:
            return stream_command(sbx, argv, envs=envs, user=user, cwd=cwd, timeout=timeout)
        finally:
            sbx.close()

    sys.exit(run_guarded(go))


def stream_command(sbx: Sandbox, argv: Tuple[str, ...], *, envs: Optional[dict],
                   user: Optional[str], cwd: Optional[str], timeout: float) -> int:
    """Run ``argv`` in ``sbx`` with its output on ours; return the exit status to pass on."""
    # Piped input goes to the command (`tar c . | hutch exec ID -- tar x`); a terminal's
    # does not, as a command without a PTY could not use it sensibly.
    forward = not sys.stdin.isatty()
    try:
        handle = sbx.commands.run(command_line(argv), envs=envs, user=user, cwd=cwd,
                                  timeout=timeout, background=True, stdin=forward,
                                  on_stdout=_write(sys.stdout), on_stderr=_write(sys.stderr),
                                  retain_output=False)  # it is on our output already
        if forward:
            _pump(sys.stdin.fileno(), lambda data: handle.send_stdin(data), handle,
                  at_eof=handle.close_stdin)
        handle.wait()
        return 0
    except errors.CommandExitError as exc:
        return exc.exit_code
    except errors.TimeoutError_ as exc:
        click.echo(f"hutch: {exc.message}", err=True)
        return TIMEOUT_EXIT


def _size() -> PtySize:
    """Our terminal's size; 80x24 when there is none or it reports zero (a fresh pty)."""
    try:
        columns, lines = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        columns, lines = 0, 0
    return PtySize(rows=lines or 24, cols=columns or 80)


@click.command("shell")
@click.argument("sandbox_id")
@click.option("-u", "--user", default=None, help="log in as this user (default: the template's)")
@click.option("-w", "--cwd", default=None, help="start directory")
@pass_ctx
def shell(ctx: Context, sandbox_id: str, user: Optional[str], cwd: Optional[str]) -> None:
    """Open an interactive shell in a sandbox (a terminal; exit the shell to leave)."""
    sys.exit(run_guarded(lambda: _shell(ctx, sandbox_id, user, cwd)))


def _shell(ctx: Context, sandbox_id: str, user: Optional[str], cwd: Optional[str]) -> int:
    sbx = Sandbox.connect(sandbox_id, **ctx.opts)
    out = sys.stdout.buffer

    def on_data(data: bytes) -> None:
        out.write(data)
        out.flush()

    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    try:
        # Raw mode before the shell exists, and without flushing: keys typed while the
        # sandbox's prompt is on its way must reach the shell, not be discarded.
        if saved is not None:
            tty.setraw(stdin, termios.TCSANOW)
        handle = sbx.pty.create(_size(), on_data=on_data, user=user, cwd=cwd, timeout=0)
        previous = signal.signal(signal.SIGWINCH,
                                 lambda *_: sbx.pty.resize(handle.pid, _size()))
        try:
            _pump(stdin, lambda data: sbx.pty.send_stdin(handle.pid, data), handle,
                  at_eof=lambda: sbx.pty.send_stdin(handle.pid, b"\x04"))
        finally:
            signal.signal(signal.SIGWINCH, previous)
        try:
            handle.wait()
        except errors.CommandExitError as exc:
            return exc.exit_code
        return 0
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sbx.close()


def _pump(fd: int, send: Any, handle: Any, at_eof: Any) -> None:
    """Forward our input until the process ends (its output arrives on the handle's thread).

    The short select timeout only bounds how long we notice the end late; input itself is
    forwarded as soon as it is readable.
    """
    while not handle.done:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:  # our input ended: so does the process's
            if not handle.done:
                try:
                    at_eof()
                except errors.NotFoundError:
                    pass  # it exited meanwhile
            return
        try:
            send(data)
        except errors.NotFoundError:
            return
