"""``hutch cp``: copy files between this machine and a sandbox (``ID:/path`` names the sandbox side).

Directories (``-r``) travel as one tar archive through a temporary file on each side, so a
tree of many small files costs two transfers and one command, not one request per file.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tarfile
import tempfile
import uuid
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
@click.option("-r", "--recursive", is_flag=True, help="copy directories")
@pass_ctx
def cp(ctx: Context, source: str, destination: str, user: Optional[str],
       recursive: bool) -> None:
    """Copy files: `hutch cp ./a ID:/tmp/a`, `hutch cp -r ID:/src ./src` ('-' = stdin/stdout).

    As with cp(1), copying onto an existing directory puts the source inside it.
    """
    src_id, src_path = split_remote(source)
    dst_id, dst_path = split_remote(destination)
    if (src_id is None) == (dst_id is None):
        raise click.UsageError("exactly one side must be ID:/path")
    if src_id is None:
        run_guarded(lambda: _upload(ctx, src_path, dst_id, dst_path, user, recursive))
    else:
        run_guarded(lambda: _download(ctx, src_id, src_path, dst_path, user, recursive))


def _upload(ctx: Context, local: str, sandbox_id: str, remote: str, user: Optional[str],
            recursive: bool) -> None:
    is_dir = local != "-" and os.path.isdir(local)
    if is_dir and not recursive:
        raise click.UsageError(f"{local} is a directory (use -r)")
    sbx = Sandbox.connect(sandbox_id, **ctx.opts)
    try:
        if is_dir:
            _upload_tree(sbx, local, remote, user)
            return
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


def _scratch() -> str:
    return f"/tmp/.hutch-cp-{uuid.uuid4().hex}.tar"


def _upload_tree(sbx: Sandbox, local: str, remote: str, user: Optional[str]) -> None:
    if _is_dir(sbx, remote, user):
        remote = remote.rstrip("/") + "/" + os.path.basename(os.path.abspath(local))
    scratch = _scratch()
    with tempfile.TemporaryFile() as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(local, arcname=".")
        archive.seek(0)
        sbx.files.write(scratch, archive, user=user)
    target = shlex.quote(remote)
    sbx.commands.run(f"trap 'rm -f {scratch}' EXIT; mkdir -p {target} && "
                     f"tar -x --no-same-owner -f {scratch} -C {target}", user=user, timeout=0)


def _download_tree(sbx: Sandbox, remote: str, local: str, user: Optional[str]) -> None:
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(remote.rstrip("/")) or "root")
    scratch = _scratch()
    sbx.commands.run(f"tar -c -f {scratch} -C {shlex.quote(remote)} .", user=user, timeout=0)
    try:
        with tempfile.TemporaryFile() as archive:
            for chunk in sbx.files.read(scratch, format="stream", user=user):
                archive.write(chunk)
            archive.seek(0)
            os.makedirs(local, exist_ok=True)
            with tarfile.open(fileobj=archive, mode="r") as tar:
                skipped = extract_tree(tar, local)
    finally:
        sbx.files.remove(scratch, user=user)
    for name in skipped:
        click.echo(f"skipped (not a file or directory): {name}", err=True)


def extract_tree(tar: tarfile.TarFile, dest: str) -> list:
    """Extract regular files and directories only, never outside ``dest``.

    The archive comes from the sandbox, which is not trusted: links, devices and paths that
    climb out are refused; modes keep only the permission bits. Returns what was skipped.
    """
    root = os.path.realpath(dest)
    skipped = []
    for member in tar:
        target = os.path.realpath(os.path.join(root, member.name))
        if target != root and not target.startswith(root + os.sep):
            skipped.append(member.name)
            continue
        if member.isdir():
            os.makedirs(target, exist_ok=True)
            os.chmod(target, (member.mode & 0o777) | 0o700)
        elif member.isfile():
            os.makedirs(os.path.dirname(target), exist_ok=True)
            source = tar.extractfile(member)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            with source, os.fdopen(os.open(target, flags, 0o600), "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            os.chmod(target, member.mode & 0o777)
        else:
            skipped.append(member.name)
    return skipped


def _download(ctx: Context, sandbox_id: str, remote: str, local: str, user: Optional[str],
              recursive: bool) -> None:
    sbx = Sandbox.connect(sandbox_id, **ctx.opts)
    try:
        if _is_dir(sbx, remote, user):
            if not recursive:
                raise click.UsageError(f"{remote} is a directory (use -r)")
            _download_tree(sbx, remote, local, user)
            return
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
