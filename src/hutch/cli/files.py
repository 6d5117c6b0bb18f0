"""``hutch cp``: copy a file between this machine and a sandbox (``ID:/path`` names the sandbox side)."""

from __future__ import annotations

import os
import re
import sys
from typing import Optional, Tuple

import click

from hutch import errors
from hutch.cli._common import Context, pass_ctx, run_guarded
from hutch.sdk import FileType, Sandbox

_REMOTE = re.compile(r"^([a-z0-9]+):(.*)$")


def split_remote(arg: str) -> Tuple[Optional[str], str]:
    """``abc123:/tmp/x`` → ("abc123", "/tmp/x"); a local path → (None, path).

    A local path containing ':' can be given as ``./name:with:colons``.
    """
    match = _REMOTE.match(arg)
    if match and not os.path.exists(arg):
        return match.group(1), match.group(2) or "."
    return None, arg


@click.command("cp")
@click.argument("source")
@click.argument("destination")
@click.option("-u", "--user", default=None, help="sandbox user (default: the template's)")
@pass_ctx
def cp(ctx: Context, source: str, destination: str, user: Optional[str]) -> None:
    """Copy a file: `hutch cp ./a ID:/tmp/a`, `hutch cp ID:/tmp/a ./a` ('-' = stdin/stdout)."""
    src_id, src_path = split_remote(source)
    dst_id, dst_path = split_remote(destination)
    if (src_id is None) == (dst_id is None):
        raise click.UsageError("exactly one side must be ID:/path")
    if src_id is None:
        run_guarded(lambda: _upload(ctx, src_path, dst_id, dst_path, user))
    else:
        run_guarded(lambda: _download(ctx, src_id, src_path, dst_path, user))


def _upload(ctx: Context, local: str, sandbox_id: str, remote: str, user: Optional[str]) -> None:
    if local != "-" and os.path.isdir(local):
        raise click.UsageError(f"{local} is a directory; hutch cp copies single files")
    sbx = Sandbox.connect(sandbox_id, **ctx.opts)
    try:
        if remote.endswith("/") or _is_dir(sbx, remote, user):
            remote = remote.rstrip("/") + "/" + ("stdin" if local == "-" else os.path.basename(local))
        if local == "-":
            sbx.files.write(remote, sys.stdin.buffer, user=user)
        else:
            with open(local, "rb") as source:
                sbx.files.write(remote, source, user=user)
    finally:
        sbx.close()


def _is_dir(sbx: Sandbox, path: str, user: Optional[str]) -> bool:
    try:
        return sbx.files.get_info(path, user=user).type is FileType.DIR
    except errors.NotFoundError:
        return False


def _download(ctx: Context, sandbox_id: str, remote: str, local: str, user: Optional[str]) -> None:
    sbx = Sandbox.connect(sandbox_id, **ctx.opts)
    try:
        chunks = sbx.files.read(remote, format="stream", user=user)
        if local == "-":
            for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        if os.path.isdir(local):
            local = os.path.join(local, os.path.basename(remote.rstrip("/")))
        partial = local + ".hutch-partial"
        try:
            with open(partial, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            os.replace(partial, local)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
    finally:
        sbx.close()
