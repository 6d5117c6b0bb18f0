"""``hutch run-code``: run a file of code in a code interpreter and show what it produced.

Text goes to the terminal as it is produced (stdout to stdout, stderr to stderr); the value of
the last line and whatever is displayed are printed as text; images and PDFs are saved as files (``result-N.png`` ...) in
``--output-dir`` and named on stderr. An exception in the code is printed and makes the exit
status 1. Without ``--sandbox`` a fresh sandbox is made and killed afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import click

from hutch.cli._common import Context, parse_pairs, pass_ctx, run_guarded
from hutch.cli.sandboxes import create_sandbox, creation_options
from hutch.sdk import Result, Sandbox

#: Formats written to files, richest first; a result saves the first one it has (anything
#: else, DataFrames included, is printed as text).
SAVED = ("png", "jpeg", "svg", "pdf")


@click.command("run-code")
@creation_options(timeout=600, template="code-interpreter")
@click.option("-l", "--language", default=None,
              help="python (default), bash, javascript, ...")
@click.option("-s", "--sandbox", "sandbox_id", default=None, metavar="ID",
              help="run in this existing sandbox (kept afterwards) instead of a new one")
@click.option("--var", multiple=True, metavar="KEY=VALUE",
              help="environment variable for this execution only")
@click.option("--code-timeout", type=float, default=0, show_default=True,
              help="seconds before the execution is interrupted (0: none)")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="where images and HTML are saved")
@click.argument("source", type=click.File("r"))
@pass_ctx
def run_code(ctx: Context, source, language: Optional[str], sandbox_id: Optional[str],
             var, code_timeout: float, output_dir: Path, **options: Any) -> None:
    """Run SOURCE (a file, or - for stdin) in a code interpreter."""
    code = source.read()
    sys.exit(run_guarded(lambda: _run(ctx, code, language, sandbox_id,
                                      parse_pairs(var, "--var"), code_timeout, output_dir,
                                      options)))


def _run(ctx: Context, code: str, language: Optional[str], sandbox_id: Optional[str],
         envs: dict, code_timeout: float, output_dir: Path, options: dict) -> int:
    if sandbox_id:
        sbx = Sandbox.connect(sandbox_id, **ctx.opts)
    else:
        sbx = create_sandbox(ctx, **options)
    saved = 0

    def on_result(result: Result) -> None:
        nonlocal saved
        fmt = next((f for f in SAVED if getattr(result, f) is not None), None)
        if fmt is not None:
            saved += 1
            output_dir.mkdir(parents=True, exist_ok=True)
            path = result.save(output_dir / f"result-{saved}{Result.suffix(fmt)}", fmt)
            click.echo(f"saved {path}", err=True)
        elif result.text is not None:
            click.echo(result.text)

    try:
        execution = sbx.run_code(
            code, language=language, envs=envs or None, timeout=code_timeout or None,
            on_stdout=lambda m: _write(sys.stdout, m.line),
            on_stderr=lambda m: _write(sys.stderr, m.line),
            on_result=on_result)
    finally:
        if not sandbox_id:
            sbx.kill()
        sbx.close()
    if execution.error is not None:
        err = execution.error
        click.echo(err.traceback or f"{err.name}: {err.value}", err=True)
        return 1
    return 0


def _write(stream, text: str) -> None:
    stream.write(text)
    stream.flush()
