"""``hutch keys create | ls | revoke``: the server's API keys (each one a tenant).

These talk to hutch's own ``/keys`` endpoints, which only the admin key may use; as root on
the server's machine that key is found without any setup (see ``hutch.sdk._config``). The
plaintext of a new key is printed once, alone on stdout, so ``KEY=$(hutch keys create)``
works; the server keeps only its hash.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional
from urllib.parse import quote

import click

from hutch.cli._common import Context, api, pass_ctx, run_guarded


def table(keys: List[Dict[str, Any]]) -> str:
    header = ("ID", "NAME", "CREATED", "REVOKED", "ADMIN")
    lines = [header] + [
        (k["id"], k["name"] or "-", k["createdAt"], k["revokedAt"] or "-",
         "yes" if k["admin"] else "")
        for k in keys
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in lines)


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (needs the admin key)."""


@keys.command()
@click.option("-n", "--name", default="", help="a note on whom the key is for")
@click.option("--json", "as_json", is_flag=True, help="print the whole answer as JSON")
@pass_ctx
def create(ctx: Context, name: str, as_json: bool) -> None:
    """Make a new key (a new tenant) and print it: it is shown only this once."""
    made = run_guarded(lambda: api(ctx, "POST", "/keys", {"name": name}))
    if as_json:
        click.echo(json.dumps(made, indent=2))
        return
    click.echo(made["key"])
    click.echo(f"key {made['id']} created; store it now, it cannot be shown again", err=True)


@keys.command("ls")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("-a", "--all", "show_all", is_flag=True, help="include revoked keys")
@pass_ctx
def ls(ctx: Context, as_json: bool, show_all: bool) -> None:
    """List the keys (their ids and names; never the keys themselves)."""
    listed = run_guarded(lambda: api(ctx, "GET", "/keys"))
    if not show_all:
        listed = [k for k in listed if not k["revokedAt"]]
    click.echo(json.dumps(listed, indent=2) if as_json else table(listed))


@keys.command()
@click.argument("key_id")
@pass_ctx
def revoke(ctx: Context, key_id: str) -> None:
    """Revoke a key by its id: it stops working at once and its sandboxes are killed."""
    run_guarded(lambda: api(ctx, "DELETE", "/keys/" + quote(key_id, safe="")))
    click.echo(f"key {key_id} revoked", err=True)
