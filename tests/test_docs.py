"""The docs state facts the code owns; these tests keep them from drifting apart."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_docs_match_the_code():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_quickstart_commands_exist():
    readme = (ROOT / "README.md").read_text()
    for script in ("scripts/serve", "scripts/test"):
        assert f"bash {script}" in readme
        assert (ROOT / script).exists()
