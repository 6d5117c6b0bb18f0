"""``hutch logs ID``: a sandbox's egress log, what it tried to reach and what was decided."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from hutch.cli._common import Context, pass_ctx, run_guarded
from hutch.sdk import Sandbox


def line(event: dict[str, Any]) -> str:
    """One decision as a line: when, verdict, what, and why."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event["time"]))
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
    return f"{when}  {verdict}  {what}  [{event['reason']}]"


@click.command("logs")
@click.argument("sandbox_id")
@click.option("-n", "--limit", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="how many of the latest decisions")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@pass_ctx
def logs(ctx: Context, sandbox_id: str, limit: int, as_json: bool) -> None:
    """Show what a sandbox tried to reach (names resolved, connections opened or refused) and
    what was decided, oldest first."""
    def go() -> None:
        for event in Sandbox.get_egress_log(sandbox_id, limit=limit, **ctx.opts):
            click.echo(json.dumps(event) if as_json else line(event))

    run_guarded(go)
