"""What templates of your own cost: an unchanged rebuild, a snapshot of a sandbox that wrote
1 GiB, and creates from a snapshot beside creates from the built-in template.

    .venv/bin/python bench/templates.py      # this section alone, against its own server
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from hutch.protocol import dockerfile


def measure(bench, run: Callable[[dict, str], bytes], n: int, pct, summary) -> list:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    definition = dockerfile.parse(f"FROM base\nRUN echo {name} > /etc/bench\nENV BENCH=1\n"
                                  "RUN mkdir -p /opt/bench && seq 1000 > /opt/bench/n\n")
    rows = []

    def build() -> float:
        t0 = time.perf_counter()
        with bench.api.stream("POST", "/templates", json={"name": name,
                                                          "definition": definition.to_json()},
                              timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if '"type": "error"' in line:
                    raise RuntimeError(line)
        return (time.perf_counter() - t0) * 1000

    first = build()
    again = [build() for _ in range(max(3, n // 5))]
    rows.append(("template build, 2 RUN steps (first, cold)", f"{first:.0f} ms", "–"))
    rows.append(("… unchanged rebuild (all cached)", summary(again), "≤ 1 s"))

    sbx = bench.create()
    snaps = []
    try:
        run(sbx, "head -c 1073741824 /dev/urandom > /home/user/big && sync")
        for _ in range(3):
            t0 = time.perf_counter()
            r = bench.api.post(f"/sandboxes/{sbx['sandboxID']}/snapshots", json={}, timeout=600)
            r.raise_for_status()
            snaps.append((time.perf_counter() - t0) * 1000)
            bench.api.delete(f"/templates/{r.json()['snapshotID']}")
        rows.append(("snapshot of a sandbox that wrote 1 GiB", summary(snaps), "≤ 3 s"))
        r = bench.api.post(f"/sandboxes/{sbx['sandboxID']}/snapshots", json={}, timeout=600)
        r.raise_for_status()
        snap = r.json()["snapshotID"]
    finally:
        bench.kill(sbx)
    try:
        from_snap, from_base = [], []
        for _ in range(n):
            for template, out in ((snap, from_snap), ("base", from_base)):
                t0 = time.perf_counter()
                s = bench.create(templateID=template)
                try:
                    run(s, "true")
                    out.append((time.perf_counter() - t0) * 1000)
                finally:
                    bench.kill(s)
        rows.append(("create → first command output, from that snapshot", summary(from_snap),
                     f"{pct(from_snap, 50) - pct(from_base, 50):+.1f} ms p50 against base"))
        rows.append(("… from `base`, interleaved", summary(from_base), "–"))
    finally:
        bench.api.delete(f"/templates/{snap}")
        bench.api.delete(f"/templates/{name}")
    return rows


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as suite

    suite.print_alone(lambda b: measure(b, lambda sbx, cmd: b.run(sbx, cmd), 10, suite.pct,
                                        suite.summary))


if __name__ == "__main__":
    main()
