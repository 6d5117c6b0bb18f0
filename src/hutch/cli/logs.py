"""``hutch logs ID``: a sandbox's audit trail: API calls, lifecycle, processes, files and
what it tried to reach, oldest first; ``--follow`` goes on with new events as they come."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from hutch.cli._common import Context, pass_ctx, run_guarded
from hutch.sdk import Sandbox

KINDS = ("api", "lifecycle", "process", "pty", "file", "dns", "connection", "closed")


def _egress(event: dict[str, Any]) -> str:
    verdict = "allowed" if event["allowed"] else "denied "
    if event["kind"] == "dns":
        answered = ", ".join(event.get("addresses") or []) or "-"
        what = f"dns {event['name']} -> {answered}"
    else:
        port = f":{event['port']}" if event.get("port") is not None else ""
        name = f" ({event['name']})" if event.get("name") else ""
        what = f"{event['protocol']} {event['address']}{port}{name}"
        if event.get("dialled") and event["dialled"] != event["address"]:
            what += f" -> {event['dialled']}"
        if event["kind"] == "closed":
            verdict = "closed "
            what += f"  {event.get('bytes_out', 0)} B out, {event.get('bytes_in', 0)} B in"
    return f"{verdict}  {what}  [{event['reason']}]"


def _process(event: dict[str, Any]) -> str:
    argv = " ".join(event.get("argv") or []) or event.get("unparsed", "?")
    who = f"as {event.get('user')}" + (f" in {event['cwd']}" if event.get("cwd") else "")
    env = f" env {','.join(event['env'])}" if event.get("env") else ""
    if event.get("phase") == "start":
        return f"{event['kind']:<8} start  pid {event.get('pid')}  {argv}  ({who}{env})"
    if "exit_code" in event:
        outcome = f"exit {event['exit_code']}"
    elif "signal" in event:
        outcome = f"signal {event['signal']}"
    elif event.get("detached"):
        outcome = "detached"
    else:
        outcome = "not started" + (f": {event['error']}" if event.get("error") else "")
    sizes = "  ".join(f"{name} {event[name + '_bytes']} B" for name in ("stdout", "stderr",
                                                                          "pty")
                      if name + "_bytes" in event)
    return (f"{event['kind']:<8} end    pid {event.get('pid')}  {outcome}  "
            f"{event.get('duration_ms', 0):.0f} ms  {sizes}  {argv}")


def line(event: dict[str, Any]) -> str:
    """One event as a line: when, then what (egress decisions: verdict, what, and why)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event["time"]))
    kind = event.get("kind")
    if kind in ("dns", "connection", "closed"):
        return f"{when}  {_egress(event)}"
    if kind == "api":
        what = (f"api      {event['method']} {event['path']} -> {event['status']}  "
                f"{event.get('duration_ms', 0):.1f} ms  key {event.get('key_id')}")
    elif kind == "lifecycle":
        what = f"lifecycle {event['event']}"
        if event.get("reason") and event["reason"] != event["event"]:
            what += f" ({event['reason']})"
        if event.get("by"):
            what += f" by key {event['by']}"
        if event["event"] == "timeout_changed":
            what += f", {event.get('timeout')} s from then"
    elif kind in ("process", "pty"):
        what = _process(event)
    elif kind == "file":
        paths = event.get("path") or ", ".join(event.get("paths") or []) or "?"
        what = (f"file     {event['op']} {paths}  {event.get('size', 0)} B as "
                f"{event.get('user')} -> {event.get('status')}")
    else:
        what = json.dumps(event)
    return f"{when}  {what}"


@click.command("logs")
@click.argument("sandbox_id")
@click.option("-n", "--limit", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="how many of the latest events")
@click.option("-k", "--kind", "kinds", multiple=True, type=click.Choice(KINDS),
              help="only events of this kind (repeatable)")
@click.option("-f", "--follow", is_flag=True,
              help="go on printing new events until the sandbox ends (Ctrl-C stops)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@pass_ctx
def logs(ctx: Context, sandbox_id: str, limit: int, kinds: tuple[str, ...], follow: bool,
         as_json: bool) -> None:
    """Show a sandbox's audit trail, oldest first: API calls about it, its lifecycle, the
    processes and files of its data plane, and what it tried to reach (names resolved,
    connections opened or refused) with what was decided."""
    def go() -> None:
        kind = list(kinds) or None
        if follow:
            events = Sandbox.follow_audit_log(sandbox_id, kind=kind, limit=limit, **ctx.opts)
        else:
            events = Sandbox.get_audit_log(sandbox_id, kind=kind, limit=limit, **ctx.opts)
        for event in events:
            click.echo(json.dumps(event) if as_json else line(event))

    run_guarded(go)
