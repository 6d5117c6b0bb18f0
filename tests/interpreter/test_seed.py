"""The seed document's "Minimum integration", verbatim with hutch's SDK: only the import and
the configuration (HUTCH_URL and HUTCH_TEMPLATE in the environment) differ."""

from __future__ import annotations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_seed_example_with_hutch(code_interpreter, server_env, monkeypatch):
    monkeypatch.setenv("HUTCH_TEMPLATE", "code-interpreter")
    user_uploaded_bytes = b"day,visits\n1,10\n2,14\n3,9\n"
    # --- the seed's code, with `from hutch import Sandbox` ---
    from hutch import Sandbox
    sbx = Sandbox()  # ~150ms boot
    result = sbx.run_code("import pandas as pd; pd.__version__")  # runs in the VM
    print(result.text)  # '2.2.3'
    # Upload a file the user gave you
    sbx.files.write("/data.csv", user_uploaded_bytes)
    chart = sbx.run_code("""
import pandas as pd, matplotlib.pyplot as plt
df = pd.read_csv('/data.csv')
df.plot(); plt.savefig('/out.png')
""")
    png = sbx.files.read("/out.png")
    # --- checks ---
    try:
        assert result.error is None and result.text.strip("'")[0].isdigit()
        assert chart.error is None, chart.error
        assert isinstance(png, str) and png
        assert bytes(sbx.files.read("/out.png", format="bytes")).startswith(PNG_MAGIC)
        # The default user wrote /data.csv (E2B's behaviour) and owns it.
        assert sbx.commands.run("stat -c %U /data.csv").stdout.strip() == "user"
    finally:
        sbx.kill()  # explicit teardown


def test_the_readme_example_runs_as_printed(code_interpreter, server_env, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("HUTCH_TEMPLATE", "code-interpreter")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Code interpreter", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope = {"user_uploaded_bytes": b"a,b\n1,2\n3,1\n"}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["result"].error is None and scope["chart"].error is None
    assert bytes(scope["png"]).startswith(PNG_MAGIC)
