"""Regenerate the parts of the docs that the code owns; `--check` fails when they drift.

- docs/operations.md: the settings table, from hutch.server.config.
- spec/openapi.json: the HTTP API's OpenAPI document, from hutch.server.openapi.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def settings_doc() -> tuple[Path, str]:
    from hutch.server.config import markdown_table

    path = ROOT / "docs" / "operations.md"
    text = path.read_text()
    new = re.sub(
        r"(<!-- settings:start[^>]*-->\n).*?(<!-- settings:end -->)",
        lambda m: m.group(1) + markdown_table().strip() + "\n" + m.group(2),
        text, count=1, flags=re.S,
    )
    return path, new


def openapi_doc() -> tuple[Path, str] | None:
    try:
        from hutch.server.openapi import document
    except ImportError:
        return None
    return ROOT / "spec" / "openapi.json", json.dumps(document(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    drift = []
    for item in (settings_doc(), openapi_doc()):
        if item is None:
            continue
        path, new = item
        old = path.read_text() if path.exists() else ""
        if old != new:
            if check:
                drift.append(str(path.relative_to(ROOT)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(new)
                print(f"wrote {path.relative_to(ROOT)}")
    if drift:
        print("generated docs drifted; run `.venv/bin/python scripts/gen_docs.py`: " + ", ".join(drift))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
