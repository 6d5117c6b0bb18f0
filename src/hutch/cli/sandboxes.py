"""``hutch sandbox create|ls|info|kill`` (and the shortcuts ``hutch ls``, ``hutch kill``)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple

import click

from hutch.cli._common import Context, parse_pairs, pass_ctx, run_guarded
from hutch.sdk import Sandbox, SandboxInfo, SandboxQuery, SandboxState


def info_dict(info: SandboxInfo) -> Dict[str, Any]:
    return {
        "sandboxID": info.sandbox_id,
        "templateID": info.template_id,
        "state": getattr(info.state, "value", info.state),
        "metadata": info.metadata,
        "startedAt": info.started_at.isoformat(),
        "endAt": info.end_at.isoformat(),
        "cpuCount": info.cpu_count,
        "memoryMB": info.memory_mb,
        "diskSizeMB": info.disk_size_mb,
        "allowInternetAccess": info.allow_internet_access,
        "envdVersion": info.envd_version,
    }


def _left(end_at: datetime) -> str:
    seconds = int((end_at - datetime.now(timezone.utc)).total_seconds())
    if seconds <= 0:
        return "expired"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def table(rows: List[SandboxInfo]) -> str:
    header = ("ID", "TEMPLATE", "STATE", "LEFT", "METADATA")
    lines = [header] + [
        (r.sandbox_id, r.template_id, str(getattr(r.state, "value", r.state)), _left(r.end_at),
         ",".join(f"{k}={v}" for k, v in sorted(r.metadata.items())))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths)) + "  " + line[-1]
        for line in lines
    ).rstrip()


@click.group()
def sandbox() -> None:
    """Create, list, inspect and kill sandboxes."""


def creation_options(timeout: int, template: str = "base",
                     ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options that shape a new sandbox (``hutch create``, ``run`` and ``run-code``)."""
    return lambda fn: _with_options(fn, [
        click.option("-t", "--template", default=template, show_default=True),
        click.option("--timeout", type=click.IntRange(min=1), default=timeout, show_default=True,
                     help="seconds the sandbox lives at most"),
        click.option("--cpu", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="CPU cores [default: the server's]"),
        click.option("--memory", type=click.IntRange(min=1), default=None, metavar="MB",
                     help="memory limit in MB [default: the server's]"),
        click.option("--disk", type=click.IntRange(min=1), default=None, metavar="MB",
                     help="writable disk space in MB [default: the server's]"),
        click.option("--network", type=click.Choice(["internet", "none"]), default=None,
                     help="outbound network access [default: internet]"),
        click.option("--no-internet", is_flag=True, hidden=True,
                     help="the same as --network none"),
        click.option("-m", "--metadata", multiple=True, metavar="KEY=VALUE"),
        click.option("-e", "--env", multiple=True, metavar="KEY=VALUE",
                     help="environment variable for every process in the sandbox"),
    ])


def _with_options(fn: Callable[..., Any], options: List[Any]) -> Callable[..., Any]:
    for option in reversed(options):
        fn = option(fn)
    return fn


def create_sandbox(ctx: Context, template: str, timeout: int, cpu: Optional[float],
                   memory: Optional[int], disk: Optional[int], network: Optional[str],
                   no_internet: bool, metadata: Tuple[str, ...], env: Tuple[str, ...]) -> Sandbox:
    if no_internet:
        if network == "internet":
            raise click.BadParameter("contradicts --network internet", param_hint="--no-internet")
        network = "none"
    return Sandbox.create(template=template, timeout=timeout,
                          metadata=parse_pairs(metadata, "--metadata") or None,
                          envs=parse_pairs(env, "--env") or None, cpu=cpu, memory_mb=memory,
                          disk_mb=disk, network=network, **ctx.opts)


@sandbox.command("create")
@creation_options(timeout=300)
@click.option("--json", "as_json", is_flag=True, help="print the sandbox's details as JSON")
@pass_ctx
def create(ctx: Context, as_json: bool, **options: Any) -> None:
    """Create a sandbox and print its id (also `hutch sandbox create`)."""
    def go() -> None:
        sbx = create_sandbox(ctx, **options)
        try:
            if as_json:
                click.echo(json.dumps(info_dict(sbx.get_info()), indent=2))
            else:
                click.echo(sbx.sandbox_id)
        finally:
            sbx.close()

    run_guarded(go)


@click.command("ls")
@click.option("-m", "--metadata", multiple=True, metavar="KEY=VALUE", help="filter")
@click.option("--state", type=click.Choice(["running", "paused"]), multiple=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True, help="ids only")
@pass_ctx
def ls(ctx: Context, metadata: Tuple[str, ...], state: Tuple[str, ...], as_json: bool,
       quiet: bool) -> None:
    """List sandboxes."""
    query = SandboxQuery(metadata=parse_pairs(metadata, "--metadata") or None,
                         state=[SandboxState(s) for s in state] or None)
    rows = run_guarded(lambda: Sandbox.list(query=query, **ctx.opts).all())
    if as_json:
        click.echo(json.dumps([info_dict(r) for r in rows], indent=2))
    elif quiet:
        for row in rows:
            click.echo(row.sandbox_id)
    else:
        click.echo(table(rows))


@click.command("info")
@click.argument("sandbox_id")
@pass_ctx
def info(ctx: Context, sandbox_id: str) -> None:
    """Show a sandbox's details (JSON)."""
    details = run_guarded(lambda: Sandbox.get_info(sandbox_id, **ctx.opts))
    click.echo(json.dumps(info_dict(details), indent=2))


@click.command("kill")
@click.argument("sandbox_ids", nargs=-1, required=True)
@pass_ctx
def kill(ctx: Context, sandbox_ids: Tuple[str, ...]) -> None:
    """Kill sandboxes (exit status 1 if one did not exist)."""
    missing = [i for i in sandbox_ids if not run_guarded(lambda i=i: Sandbox.kill(i, **ctx.opts))]
    for sandbox_id in missing:
        click.echo(f"not found: {sandbox_id}", err=True)
    if missing:
        raise SystemExit(1)


@sandbox.command("timeout")
@click.argument("sandbox_id")
@click.argument("seconds", type=click.IntRange(min=1))
@pass_ctx
def set_timeout(ctx: Context, sandbox_id: str, seconds: int) -> None:
    """Make a sandbox live SECONDS from now (shorter or longer)."""
    run_guarded(lambda: Sandbox.set_timeout(seconds, sandbox_id, **ctx.opts))


sandbox.add_command(ls)
sandbox.add_command(info)
sandbox.add_command(kill)
