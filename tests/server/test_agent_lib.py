"""The agent's staged copy: only what it imports, compiled, readable by the sandbox's uids."""

import stat

from hutch.server import agent_lib


def test_stage_copies_compiles_and_is_world_readable(tmp_path):
    lib = agent_lib.stage(tmp_path)
    assert lib.name == "hutch"
    assert (lib / "agent" / "__main__.py").is_file() and (lib / "protocol" / "envelope.py").is_file()
    assert not (lib / "server").exists() and not (lib / "sdk").exists()
    assert list((lib / "agent" / "__pycache__").glob("*.pyc"))
    for path in [lib, *lib.rglob("*")]:
        mode = path.stat().st_mode
        assert mode & stat.S_IROTH, path
        if path.is_dir():
            assert mode & stat.S_IXOTH, path
    assert agent_lib.stage(tmp_path) == lib               # the same content stages once
    assert len(list((tmp_path / "agent-lib").iterdir())) == 1
