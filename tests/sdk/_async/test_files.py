"""Files in a real sandbox: text, bytes, big files, listing, metadata calls, watching,
errors for missing paths."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from hutch import AsyncSandbox, errors
from hutch.sdk import FilesystemEventType, FileType

from .helpers import eventually


@pytest.fixture(scope="module")
async def sbx(module_opts):
    sandbox = await AsyncSandbox.create(timeout=600, metadata={"suite": "sdk-files"},
                                        **module_opts)
    try:
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


async def test_text_and_bytes(sbx):
    info = await sbx.files.write("/tmp/t/hello.txt", "héllo\n")
    assert (info.name, info.path, info.type) == ("hello.txt", "/tmp/t/hello.txt", FileType.FILE)
    assert await sbx.files.read("/tmp/t/hello.txt") == "héllo\n"
    blob = bytes(range(256)) * 4
    await sbx.files.write("/tmp/t/blob.bin", blob)
    assert await sbx.files.read("/tmp/t/blob.bin", format="bytes") == bytearray(blob)
    await sbx.files.write("/tmp/t/from-io.bin", io.BytesIO(blob))
    assert await sbx.files.read("/tmp/t/from-io.bin", format="bytes") == bytearray(blob)


async def test_relative_paths_and_ownership(sbx):
    await sbx.files.write("notes.txt", "mine")
    info = await sbx.files.get_info("/home/user/notes.txt")
    assert info.owner == "user" and info.size == 4
    await sbx.files.write("/root/secret.txt", "root only", user="root")
    assert (await sbx.files.get_info("/root/secret.txt", user="root")).owner == "root"
    with pytest.raises(errors.HutchError):
        await sbx.files.read("/root/secret.txt")


async def test_big_file_round_trip(sbx):
    data = random.Random(50).randbytes(50 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    await sbx.files.write("/tmp/big.bin", data)
    result = await sbx.commands.run("sha256sum /tmp/big.bin | cut -d' ' -f1")
    assert result.stdout.strip() == digest
    assert hashlib.sha256(await sbx.files.read("/tmp/big.bin", format="bytes")).hexdigest() == digest
    hasher, size = hashlib.sha256(), 0
    async for chunk in await sbx.files.read("/tmp/big.bin", format="stream"):
        hasher.update(chunk)
        size += len(chunk)
    assert (size, hasher.hexdigest()) == (len(data), digest)


async def test_list_make_dir_rename_remove(sbx):
    assert await sbx.files.make_dir("/tmp/tree/a/b") is True
    assert await sbx.files.make_dir("/tmp/tree/a/b") is False
    await sbx.files.write_files([{"path": "/tmp/tree/one.txt", "data": "1"},
                                 {"path": "/tmp/tree/a/two.txt", "data": b"22"}])
    top = await sbx.files.list("/tmp/tree")
    assert sorted((e.name, e.type) for e in top) == [("a", FileType.DIR),
                                                      ("one.txt", FileType.FILE)]
    deep = await sbx.files.list("/tmp/tree", depth=3)
    assert {e.path for e in deep} >= {"/tmp/tree/a/b", "/tmp/tree/a/two.txt"}
    moved = await sbx.files.rename("/tmp/tree/one.txt", "/tmp/tree/uno.txt")
    assert moved.path == "/tmp/tree/uno.txt"
    assert await sbx.files.exists("/tmp/tree/uno.txt")
    assert not await sbx.files.exists("/tmp/tree/one.txt")
    await sbx.files.remove("/tmp/tree")
    assert not await sbx.files.exists("/tmp/tree")


async def test_missing_paths(sbx):
    with pytest.raises(errors.FileNotFoundError_):
        await sbx.files.read("/tmp/no/such/file")
    with pytest.raises(errors.FileNotFoundError_):
        await sbx.files.get_info("/tmp/no/such/file")
    with pytest.raises(errors.FileNotFoundError_):
        await sbx.files.list("/tmp/no/such/dir")
    with pytest.raises(errors.FileNotFoundError_):
        await sbx.files.watch_dir("/tmp/no/such/dir")


async def test_watch_dir(sbx):
    await sbx.files.make_dir("/tmp/watched")
    seen: list = []
    handle = await sbx.files.watch_dir("/tmp/watched", on_event=seen.append)
    try:
        await sbx.files.write("/tmp/watched/new.txt", "x")
        await eventually(lambda: any(e.name == "new.txt" and e.type in (
            FilesystemEventType.CREATE, FilesystemEventType.WRITE) for e in seen),
            what="a watch event")
        assert "new.txt" in {e.name for e in handle.get_new_events()}
        await sbx.files.write("/tmp/watched/second.txt", "y")
        await eventually(lambda: any(e.name == "second.txt" for e in seen), what="a second event")
        polled = {e.name for e in handle.get_new_events()}
        assert "second.txt" in polled and polled <= {"new.txt", "second.txt"}
    finally:
        await handle.stop()


async def test_full_disk_is_not_enough_space(sbx):
    # Leave 64 KiB free on the sandbox's quota'd disk, then try to write a megabyte.
    await sbx.commands.run(
        "fallocate -l $(( $(df --output=avail -B1 /home/user | tail -1) - 65536 )) "
        "/home/user/filler")
    try:
        with pytest.raises(errors.NotEnoughSpaceError):
            await sbx.files.write("/home/user/one-more.bin", bytes(1 << 20))
    finally:
        await sbx.commands.run("rm -f /home/user/filler /home/user/one-more.bin")
    await sbx.files.write("/home/user/after.txt", "room again")


async def test_recursive_watch_with_entries(sbx):
    await sbx.files.make_dir("/tmp/rwatch/inner")
    seen: list = []
    handle = await sbx.files.watch_dir("/tmp/rwatch", on_event=seen.append, recursive=True,
                                       include_entry=True)
    try:
        await sbx.files.write("/tmp/rwatch/inner/deep.txt", "abc")
        await eventually(lambda: any(e.name == "inner/deep.txt" and e.entry is not None
                                     for e in seen), what="an event from a subdirectory")
        entry = next(e.entry for e in seen if e.name == "inner/deep.txt" and e.entry)
        assert entry.path == "/tmp/rwatch/inner/deep.txt"
    finally:
        await handle.stop()
    await sbx.files.write("/tmp/rwatch/plain.txt", "x")
    with pytest.raises(errors.HutchError):
        await sbx.files.watch_dir("/tmp/rwatch/plain.txt")
