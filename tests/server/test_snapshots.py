"""Snapshots and forks of running sandboxes through the official e2b SDK: the files are
saved in one consistent moment while the sandbox keeps running, new sandboxes start from
them, and other keys see none of it."""

from __future__ import annotations

import httpx
import pytest

from hutch import Sandbox

pytestmark = pytest.mark.timeout(600)


def test_snapshot_then_create_from_it(server_env):
    from e2b import Sandbox as E2BSandbox

    sbx = E2BSandbox.create()
    try:
        sbx.commands.run("echo state-1 > /home/user/state; sudo rm /etc/motd; "
                         "nohup sleep 1000 >/dev/null 2>&1 &")
        snap = sbx.create_snapshot()
        assert snap.snapshot_id and snap.names == [snap.snapshot_id]
        # The source runs on, processes and all; what it changes later is not in the snapshot.
        assert sbx.commands.run("pgrep -c sleep").stdout.strip() == "1"
        sbx.commands.run("echo state-2 > /home/user/state")
        copy = E2BSandbox.create(template=snap.snapshot_id)
        try:
            r = copy.commands.run("cat /home/user/state; test -e /etc/motd || echo no-motd; "
                                  "whoami; pgrep -c sleep || true")
            assert r.stdout.split() == ["state-1", "no-motd", "user", "0"], r.stdout
        finally:
            copy.kill()
        listed = [s.snapshot_id for s in sbx.list_snapshots().next_items()]
        assert snap.snapshot_id in listed
        assert E2BSandbox.delete_snapshot(snap.snapshot_id) is True
        assert E2BSandbox.delete_snapshot(snap.snapshot_id) is False
    finally:
        sbx.kill()


def test_fork(server_env):
    with Sandbox.create(envs={"ROLE": "source"}, metadata={"tag": "forked"}) as source:
        try:
            source.files.write("/home/user/work.txt", b"half done")
            url, key = server_env["HUTCH_URL"], server_env["HUTCH_API_KEY"]
            made = source.fork(count=2, timeout=120)
            assert all(isinstance(f, Sandbox) for f in made), made
            forks = [f.sandbox_id for f in made]
            assert len(set(forks)) == 2 and source.sandbox_id not in forks
            for fork in made:
                try:
                    assert fork.files.read("/home/user/work.txt") == "half done"
                    assert fork.commands.run("echo $ROLE").stdout == "source\n"
                    assert fork.get_info().metadata == {"tag": "forked"}
                finally:
                    fork.kill()
            # The snapshot the forks came from is not left behind as a template.
            listed = httpx.get(f"{url}/snapshots", headers={"X-API-KEY": key}).json()
            assert not any(source.sandbox_id[:10] in s["snapshotID"] for s in listed)
        finally:
            source.kill()


def test_the_sdks_snapshot_calls(server_env):
    with Sandbox.create() as sbx:
        try:
            sbx.files.write("/home/user/a.txt", "kept")
            snap = sbx.create_snapshot(name=f"mine-{sbx.sandbox_id[:8]}")
            assert snap.snapshot_id == f"mine-{sbx.sandbox_id[:8]}"
            assert [s.snapshot_id for s in Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id)] \
                == [snap.snapshot_id]
            with Sandbox.create(template=snap.snapshot_id) as copy:
                try:
                    assert copy.files.read("/home/user/a.txt") == "kept"
                finally:
                    copy.kill()
            assert Sandbox.delete_snapshot(snap.snapshot_id) is True
            assert Sandbox.delete_snapshot(snap.snapshot_id) is False
        finally:
            sbx.kill()


def test_refusals(server_env):
    url, admin = server_env["HUTCH_URL"], server_env["HUTCH_API_KEY"]
    with Sandbox.create() as sbx:
        try:
            r = httpx.post(f"{url}/sandboxes/{sbx.sandbox_id}/snapshots", json={"memory": True},
                           headers={"X-API-KEY": admin})
            assert r.status_code == 400 and "files only" in r.json()["message"]
            other = httpx.post(f"{url}/keys", json={"name": "snap-test"},
                               headers={"X-API-KEY": admin}).json()
            try:
                r = httpx.post(f"{url}/sandboxes/{sbx.sandbox_id}/snapshots", json={},
                               headers={"X-API-KEY": other["key"]})
                assert r.status_code == 404                 # another key's sandbox
            finally:
                httpx.delete(f"{url}/keys/{other['id']}", headers={"X-API-KEY": admin})
            r = httpx.post(f"{url}/sandboxes/{sbx.sandbox_id}/fork", json={"count": 99},
                           headers={"X-API-KEY": admin})
            assert r.status_code == 400
        finally:
            sbx.kill()


def test_the_e2b_sdks_fork(server_env):
    from e2b import Sandbox as E2BSandbox

    sbx = E2BSandbox.create()
    try:
        sbx.files.write("/home/user/f.txt", "forked")
        forks = sbx.fork(count=2, timeout=60)
        assert len(forks) == 2 and all(isinstance(f, E2BSandbox) for f in forks), forks
        try:
            assert [f.files.read("/home/user/f.txt") for f in forks] == ["forked", "forked"]
        finally:
            for f in forks:
                f.kill()
    finally:
        sbx.kill()
