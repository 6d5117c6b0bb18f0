"""Where the SDK sends its requests and with which key, resolved once per sandbox object.

| setting         | argument  | environment      | default                      |
|-----------------|-----------|------------------|------------------------------|
| server URL      | `url`     | `HUTCH_URL`      | `http://127.0.0.1:7711`     |
| API key         | `api_key` | `HUTCH_API_KEY`  | the local admin key (below)  |
| request timeout | `request_timeout` | –        | 60 s                         |
| routing domain  | `domain`  | `HUTCH_DOMAIN`   | the server's (from create), else none |

The local admin key: when no key is given, the process runs as root and the URL points at
the loopback interface, the key is read from `<HUTCH_DATA_DIR or /var/lib/hutch>/admin.key`.
The server writes its admin key there (mode 0600), so on the machine that runs `hutch serve`
the SDK and the CLI work without any setup. Only root can read that file anyway, and a
remote URL never gets the local key sent to it.

The routing domain only names a sandbox's ports (``get_host``: ``<port>-<id>.<domain>``); the
server states its own ``HUTCH_DOMAIN`` when it creates a sandbox, and that wins.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:7711"
DEFAULT_DATA_DIR = "/var/lib/hutch"
DEFAULT_REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class ConnectionConfig:
    url: str
    api_key: Optional[str]
    request_timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT
    domain: Optional[str] = None

    def timeout(self, request_timeout: Optional[float]) -> Optional[float]:
        """A per-call timeout wins over the config's; 0 means "no limit"."""
        value = self.request_timeout if request_timeout is None else request_timeout
        return value or None


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_admin_key(env: Mapping[str, str], euid: int) -> Optional[str]:
    """The server's admin key, readable by root on the server's own machine."""
    if euid != 0:
        return None
    path = Path(env.get("HUTCH_DATA_DIR") or DEFAULT_DATA_DIR) / "admin.key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def resolve(
    url: Optional[str] = None,
    api_key: Optional[str] = None,
    request_timeout: Optional[float] = None,
    env: Optional[Mapping[str, str]] = None,
    euid: Optional[int] = None,
    domain: Optional[str] = None,
) -> ConnectionConfig:
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    url = (url or env.get("HUTCH_URL") or DEFAULT_URL).rstrip("/")
    key = api_key or env.get("HUTCH_API_KEY") or None
    if key is None and is_loopback(url):
        key = local_admin_key(env, euid)
    timeout = DEFAULT_REQUEST_TIMEOUT if request_timeout is None else request_timeout
    domain = (domain or env.get("HUTCH_DOMAIN") or "").strip(".") or None
    return ConnectionConfig(url=url, api_key=key, request_timeout=timeout, domain=domain)
