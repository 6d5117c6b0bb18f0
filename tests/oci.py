"""OCI images for tests, made by hand, and Debian's docker-registry on loopback to serve them
(the registry stores in a directory of the test's own and is stopped by PID)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator


def layer(entries: list[tuple[str, str, bytes, int, int]]) -> bytes:
    """An uncompressed layer: (name, kind f/d/l, data or link target, mode, uid)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data, mode, uid in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid = mode, uid, uid
            if kind == "d":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def oci_layout(path: Path, layers: list[bytes], config: dict, tag: str) -> None:
    """An OCI image layout: gzipped layers, config, manifest, index."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    diff_ids, descs = [], []
    for raw in layers:
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        packed = gzip.compress(raw, mtime=0)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": put(packed), "size": len(packed)})
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(cfg), "size": len(cfg)},
                           "layers": descs}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


@contextlib.contextmanager
def running_registry(root: Path, users: dict[str, str] | None = None) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:<free port>; yields "127.0.0.1:<port>". With
    ``users`` (name -> password) it answers only them (htpasswd, bcrypt)."""
    if not shutil.which("docker-registry") or not shutil.which("skopeo"):
        raise RuntimeError("docker-registry and skopeo are needed (scripts/install --test)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = ""
    if users:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt    # libxcrypt's bcrypt, which the registry's htpasswd wants

        (root / "htpasswd").write_text("".join(
            f"{name}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
            for name, password in users.items()))
        auth = (f"auth:\n  htpasswd:\n    realm: hutch-test\n"
                f"    path: {root / 'htpasswd'}\n")
    (root / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n{auth}")
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).read()
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 401:             # up, and asking for credentials
                    break
                raise
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the test registry did not start")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def push_tiny_image(registry: str, workdir: Path, name: str,
                    creds: str | None = None) -> str:
    """A two-layer image (static busybox, a user with files of its own, a file the second
    layer whites out) pushed as ``registry/name`` (as ``creds``, "user:password", if given);
    returns the reference."""
    busybox = Path("/bin/busybox").read_bytes()
    lower = layer([("bin", "d", b"", 0o755, 0), ("bin/busybox", "f", busybox, 0o755, 0),
                   ("bin/sh", "l", b"busybox", 0o777, 0), ("etc", "d", b"", 0o755, 0),
                   ("etc/passwd", "f", b"root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/home/app:"
                                         b"/bin/sh\n", 0o644, 0),
                   ("home", "d", b"", 0o755, 0), ("home/app", "d", b"", 0o750, 1234),
                   ("home/app/data.txt", "f", b"the app's\n", 0o600, 1234),
                   ("gone.txt", "f", b"deleted above\n", 0o644, 0)])
    upper = layer([(".wh.gone.txt", "f", b"", 0o644, 0),
                   ("new.txt", "f", b"from layer two\n", 0o644, 0)])
    tag = name.rsplit(":", 1)[1]
    oci_layout(workdir / "layout", [lower, upper],
               {"Env": ["PATH=/bin", "GREETING=hi there"], "User": "app",
                "WorkingDir": "/home/app", "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["echo started"]}, tag)
    ref = f"{registry}/{name}"
    login = ["--dest-creds", creds] if creds else []
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", *login,
                    f"oci:{workdir / 'layout'}:{tag}", f"docker://{ref}"], check=True,
                   capture_output=True)
    return ref
