"""cgroup reading and cleanup on both layouts, against cgroupfs-shaped directory trees (the
live host is hybrid v1; this covers the pure v2 code path too)."""

from __future__ import annotations

from pathlib import Path

from hutch.runtime import cgroup


def _v2(root: Path) -> Path:
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "cgroup.procs").write_text("")
    d = root / "hutchr" / "box1"
    d.mkdir(parents=True)
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (d / "memory.current").write_text("4096\n")
    (d / "memory.max").write_text("67108864\n")
    (d / "pids.current").write_text("3\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n")
    return d


def _v1(root: Path) -> None:
    for h in ("memory", "cpuacct", "pids", "cpu", "unified"):
        (root / h).mkdir()
        (root / h / "cgroup.procs").write_text("")
        (root / h / "hutchr" / "box1").mkdir(parents=True)
    (root / "memory/hutchr/box1/memory.usage_in_bytes").write_text("8192\n")
    (root / "memory/hutchr/box1/memory.limit_in_bytes").write_text("1048576\n")
    (root / "cpuacct/hutchr/box1/cpuacct.usage").write_text("123456\n")
    (root / "pids/hutchr/box1/pids.current").write_text("2\n")
    (root / "memory/hutchr/box1/memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")


def test_v2_stats_and_ids(tmp_path):
    _v2(tmp_path)
    assert cgroup.is_v2(tmp_path)
    assert cgroup.hierarchies(tmp_path) == [tmp_path]
    assert cgroup.stats("hutchr", "box1", tmp_path) == {
        "cpu_ns": 1_500_000, "memory_bytes": 4096, "memory_limit": 64 << 20, "pids": 3,
        "oom_kills": 2}
    assert cgroup.stats("hutchr", "nope", tmp_path) is None
    assert cgroup.list_ids("hutchr", tmp_path) == {"box1"}


def test_v2_unlimited_memory_reads_as_none(tmp_path):
    d = _v2(tmp_path)
    (d / "memory.max").write_text("max\n")
    assert cgroup.stats("hutchr", "box1", tmp_path)["memory_limit"] is None


def test_v1_stats_and_ids(tmp_path):
    _v1(tmp_path)
    assert not cgroup.is_v2(tmp_path)
    assert {p.name for p in cgroup.hierarchies(tmp_path)} == {"memory", "cpuacct", "pids",
                                                               "cpu", "unified"}
    assert cgroup.stats("hutchr", "box1", tmp_path) == {
        "cpu_ns": 123456, "memory_bytes": 8192, "memory_limit": 1 << 20, "pids": 2,
        "oom_kills": 1}
    assert cgroup.list_ids("hutchr", tmp_path) == {"box1"}


def test_remove_goes_leaf_first_in_every_hierarchy(tmp_path):
    _v1(tmp_path)
    for h in ("memory", "pids"):  # nested cgroups a runtime may leave below the sandbox's
        (tmp_path / h / "hutchr" / "box1" / "sub").mkdir()
    # real cgroupfs dirs hold only kernel files; an empty tree stands in for them here
    for f in tmp_path.glob("*/hutchr/box1/*"):
        if f.is_file():
            f.unlink()
    cgroup.remove("hutchr", "box1", tmp_path)
    cgroup.remove_parent("hutchr", tmp_path)
    assert not list(tmp_path.glob("*/hutchr"))


def test_set_limits_v2(tmp_path):
    d = _v2(tmp_path)
    (d / "memory.swap.max").write_text("0\n")
    cgroup.set_limits("hutchr", "box1", 512 << 20, 150000, 100000, tmp_path)
    assert (d / "memory.max").read_text() == str(512 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert (d / "cpu.weight").read_text() == "100"


def test_set_limits_v1_keeps_memory_below_memory_plus_swap(tmp_path, monkeypatch):
    _v1(tmp_path)
    mem = tmp_path / "memory/hutchr/box1"
    (mem / "memory.memsw.limit_in_bytes").write_text("1048576\n")
    order: list[str] = []
    real = cgroup._write

    def write(path, value):
        order.append(path.name)
        real(path, value)

    monkeypatch.setattr(cgroup, "_write", write)
    cgroup.set_limits("hutchr", "box1", 4 << 20, 50000, 100000, tmp_path)   # raise
    assert order[:2] == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    order.clear()
    cgroup.set_limits("hutchr", "box1", 2 << 20, 50000, 100000, tmp_path)   # lower
    assert order[:2] == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    assert (mem / "memory.limit_in_bytes").read_text() == str(2 << 20)
    cpu = tmp_path / "cpu/hutchr/box1"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.shares").read_text() == "1024"
