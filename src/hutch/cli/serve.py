"""``hutch serve`` (run the server) and ``hutch doctor`` (check this host can run it).

Settings come from the documented table in :mod:`hutch.server.config` (``HUTCH_*`` environment
variables); the few flags here override the most common ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from pathlib import Path

import click

from hutch.errors import HutchError


def _config(**overrides):
    from hutch.server.config import load
    try:
        return load(**overrides)
    except HutchError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--host", default=None, help="Listen address (HUTCH_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (HUTCH_PORT, default 7711).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="State directory (HUTCH_DATA_DIR, default /var/lib/hutch).")
def serve(host, port, data_dir):
    """Run the hutch server (E2B-compatible API and sandbox proxy) until Ctrl-C.

    Sandboxes keep running when the server stops; the next start adopts them.
    """
    from hutch.server.app import run

    cfg = _config(host=host, port=port, data_dir=data_dir)
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Per-request connection chatter of the upstream pool drowns everything else.
    logging.getLogger("httpcore").setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        from hutch.templates import TerminalProgress
        progress = TerminalProgress()
    except ImportError:  # pragma: no cover - the templates package always ships it
        progress = None

    def ready(userver):
        sock = userver.servers[0].sockets[0].getsockname() if userver.servers else None
        actual = sock[1] if sock else cfg.port
        url = f"http://{cfg.host}:{actual}"
        click.echo(f"hutch is serving on {url}")
        click.echo(f"  admin API key: {cfg.admin_key_path}")
        click.echo(f"  use it with:   E2B_API_URL={url} E2B_SANDBOX_URL={url} "
                   f"E2B_API_KEY=$(cat {cfg.admin_key_path})")

    try:
        with asyncio.Runner(loop_factory=_loop_factory(cfg.event_loop)) as runner:
            runner.run(run(cfg, progress=progress, on_ready=ready))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except HutchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("hutch stopped (sandboxes keep running)")


def _loop_factory(name: str):
    """The event loop HUTCH_EVENT_LOOP names (None: the standard library's)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


@click.command()
def doctor():
    """Check that this host can run hutch sandboxes; exit non-zero if something is missing."""
    from hutch.server.doctor import isolation_checks, pool_checks, run_checks

    cfg = _config()
    checks = run_checks(cfg)
    if not any(not c.ok and not c.optional for c in checks):
        # The same self-test `hutch serve` runs; it needs everything above to work.
        checks += isolation_checks(cfg)
    checks += pool_checks(cfg)
    for c in checks:
        if c.ok:
            mark = click.style("ok  ", fg="green")
        else:
            mark = click.style(" -- " if c.optional else "FAIL", fg=None if c.optional else "red")
        click.echo(f"[{mark}] {c.name}" + (f": {c.detail}" if c.detail else ""))
        if not c.ok and not c.optional and c.fix:
            click.echo(f"       fix: {c.fix}")
    failed = [c for c in checks if not c.ok and not c.optional]
    if failed:
        click.echo(f"{len(failed)} check(s) failed")
        sys.exit(1)
    click.echo("all checks passed")


if __name__ == "__main__":  # pragma: no cover - `hutch serve` is the usual door
    serve()
