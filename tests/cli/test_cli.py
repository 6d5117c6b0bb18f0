"""The `hutch` command without a server: help, argument parsing, lazy server commands."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from hutch.cli import files, main, terminal
from hutch.cli._common import parse_pairs


def test_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "hutch", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("sandbox", "create", "run", "ls", "kill", "exec", "shell", "cp", "serve",
                 "doctor"):
        assert f"  {name} " in result.stdout


def test_server_commands_are_not_imported_by_client_commands():
    code = ("import sys; from click.testing import CliRunner; from hutch.cli.main import cli; "
            "r = CliRunner().invoke(cli, ['sandbox', '--help']); assert r.exit_code == 0; "
            "print('hutch.cli.serve' in sys.modules, 'hutch.server' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split() == ["False", "False"]


def test_missing_server_module_gives_a_clear_command(monkeypatch):
    monkeypatch.setitem(main._LAZY, "serve", "hutch.cli.no_such_module")
    result = CliRunner().invoke(main.cli, ["serve", "--port", "1"])
    assert result.exit_code != 0
    assert "not available" in result.output


def test_parse_pairs():
    assert parse_pairs(("A=1", "B=x=y", "C="), "--env") == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(click.BadParameter):
        parse_pairs(("nope",), "--env")


def test_split_remote(tmp_path, monkeypatch):
    assert files.split_remote("abc123:/tmp/x") == ("abc123", "/tmp/x")
    assert files.split_remote("abc123:") == ("abc123", ".")
    assert files.split_remote("./local") == (None, "./local")
    assert files.split_remote("/abs/path") == (None, "/abs/path")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "abc:def").write_text("x")  # an existing local name wins
    assert files.split_remote("abc:def") == (None, "abc:def")


def test_cp_needs_exactly_one_remote_side():
    runner = CliRunner()
    assert "exactly one side" in runner.invoke(main.cli, ["cp", "./a", "./b"]).output
    assert "exactly one side" in runner.invoke(main.cli, ["cp", "ab:/a", "cd:/b"]).output


def test_exec_command_line():
    assert terminal.command_line(("ls -la | wc -l",)) == "ls -la | wc -l"
    assert terminal.command_line(("echo", "a b", "$HOME")) == "echo 'a b' '$HOME'"


def test_client_commands_report_an_unreachable_server_in_one_line(tmp_path):
    # A port nobody listens on: a bound but never listening socket.
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = CliRunner().invoke(main.cli, ["--url", url, "--api-key", "k", "ls"])
    assert result.exit_code == 1
    assert result.output.startswith("error: UnavailableError: cannot reach the hutch server")


def test_extract_tree_refuses_what_could_escape(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name, data=b"", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size, info.mode = kind, link, len(data), 0o4755
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("./ok/file.txt", b"fine")
        add("../escaped.txt", b"bad")
        add("/abs.txt", b"bad")
        add("./link", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add("./dev", kind=tarfile.CHRTYPE)
    buf.seek(0)
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(fileobj=buf) as tar:
        skipped = files.extract_tree(tar, str(dest))
    assert (dest / "ok" / "file.txt").read_bytes() == b"fine"
    assert (dest / "ok" / "file.txt").stat().st_mode & 0o7777 == 0o755  # no setuid
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(skipped) == ["../escaped.txt", "./dev", "./link", "/abs.txt"]
    assert sorted(p.name for p in dest.rglob("*")) == ["file.txt", "ok"]


def test_egress_log_lines():
    from hutch.cli.logs import line

    base = {"time": 0, "sandbox_id": "s", "protocol": "tcp", "port": 443, "allowed": True}
    assert line({**base, "kind": "connection", "name": "pypi.org", "address": "198.51.100.9",
                 "dialled": "198.51.100.7", "reason": "allowed name", "via": "proxy"}) == (
        "1970-01-01T00:00:00Z  allowed  tcp 198.51.100.9:443 (pypi.org) -> 198.51.100.7  "
        "[allowed name]")
    assert line({**base, "kind": "closed", "name": None, "address": "198.51.100.9",
                 "reason": "closed", "bytes_out": 517, "bytes_in": 90210}) == (
        "1970-01-01T00:00:00Z  closed   tcp 198.51.100.9:443  517 B out, 90210 B in  [closed]")
    assert line({**base, "kind": "dns", "name": "pypi.org", "addresses": [],
                 "allowed": False, "reason": "name not allowed"}) == (
        "1970-01-01T00:00:00Z  denied   dns pypi.org -> -  [name not allowed]")
