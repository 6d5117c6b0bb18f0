"""The OCI floor: a bare `runc run` of the bundle hutch's runtime builds, minus hutch.

Same namespaces, id maps, mounts, limits, capabilities and seccomp profile (built by the
runtime's own pure functions), but the template's rootfs is used read-only in place (no
overlay, no quota image), the network namespace is a fresh empty one, and there is no agent:
the init runs `/bin/true`. The gap between this and hutch's create → first output is what
hutch itself costs.
"""

from __future__ import annotations

import json
from pathlib import Path

from hutch.runtime import bundle
from hutch.runtime.spec import SandboxSpec

INIT_CANDIDATES = ("/usr/bin/tini-static", "/usr/bin/tini")


def template_rootfs(templates_dir: Path, name: str = "base") -> Path:
    found = sorted((templates_dir / name).glob("*/rootfs"))
    if not found:
        raise FileNotFoundError(f"no built {name!r} template under {templates_dir}")
    return found[-1]


def bare_runc_bundle(workdir: Path, templates_dir: Path, *, instance: str = "hutchfloor") -> Path:
    """Write a bundle doing `true` into workdir/bundle and return its path."""
    init = next(Path(p) for p in INIT_CANDIDATES if Path(p).exists())
    spec = SandboxSpec(id="floor", layers=(), args=("/bin/true",), network="none")
    where = bundle.Placement(
        rootfs=template_rootfs(templates_dir), run_dir=workdir, init=init, sysfs=Path("/sys"),
        netns=Path("/proc/self/ns/net"), cgroups_path=f"/{instance}/floor",
        uid_base=100000, uid_count=65536, nofile=1024,
    )
    cfg = bundle.config(spec, where)
    cfg["root"]["readonly"] = True
    ns = cfg["linux"]["namespaces"]
    cfg["linux"]["namespaces"] = [n for n in ns if n["type"] != "network"] + [{"type": "network"}]
    # No run dir and no host sysfs: a fresh netns owned by the sandbox's userns may mount its own.
    cfg["mounts"] = [m for m in cfg["mounts"] if m["destination"] not in (bundle.RUN_PATH, "/sys")]
    cfg["mounts"].insert(5, {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                             "options": ["nosuid", "noexec", "nodev", "ro"]})
    out = workdir / "bundle"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(bundle.render(cfg))
    return out


if __name__ == "__main__":
    print(json.dumps(str(bare_runc_bundle(Path("/tmp/hutch-floor"), Path("/var/lib/hutch-test/templates")))))
