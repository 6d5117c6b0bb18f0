"""The docs state facts the code owns; these tests keep them from drifting apart."""

from pathlib import Path

from hutch.server.config import markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_operations_doc_carries_the_settings_table_verbatim():
    assert markdown_table().strip() in (ROOT / "docs" / "operations.md").read_text()


def test_quickstart_commands_exist():
    readme = (ROOT / "README.md").read_text()
    for script in ("scripts/serve", "scripts/test"):
        assert f"bash {script}" in readme
        assert (ROOT / script).exists()
