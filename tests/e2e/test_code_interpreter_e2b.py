"""The official `e2b-code-interpreter` SDK from PyPI, unchanged, against a real hutch server:
the seed document's example verbatim, then the calls its users lean on."""

from __future__ import annotations

import base64
import threading

import pytest
from e2b_code_interpreter import AsyncSandbox, Sandbox
from e2b.exceptions import TimeoutException

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_seed_example(code_interpreter, server_env):
    user_uploaded_bytes = b"day,visits\n1,10\n2,14\n3,9\n"
    # --- as written in the seed, only the configuration (env vars) differs, and the bare
    # constructor: e2b 2.x removed `Sandbox()` in favour of `Sandbox.create()` ---
    sbx = Sandbox.create()  # ~150ms boot
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
        assert chart.error is None
        assert isinstance(png, str) and png            # text by default, as with E2B
        raw = sbx.files.read("/out.png", format="bytes")
        assert bytes(raw).startswith(PNG_MAGIC)
    finally:
        sbx.kill()  # explicit teardown


@pytest.fixture(scope="module")
def ci(code_interpreter):
    env = code_interpreter.env
    sbx = Sandbox.create(api_key=env["E2B_API_KEY"], api_url=env["E2B_API_URL"],
                         sandbox_url=env["E2B_SANDBOX_URL"])
    try:
        yield sbx
    finally:
        sbx.kill()


def test_results_logs_and_errors(ci):
    out = []
    ex = ci.run_code("x = 2\nprint('hello')\nx * 21", on_stdout=out.append)
    assert ex.text == "42" and ex.logs.stdout == ["hello\n"]
    assert [m.line for m in out] == ["hello\n"]
    err = ci.run_code("undefined_name")
    assert err.error.name == "NameError" and "undefined_name" in err.error.value
    assert ci.run_code("x").text == "2"


def test_charts_and_images_deserialize(ci):
    ex = ci.run_code("import matplotlib.pyplot as plt\n"
                     "plt.bar(['a', 'b'], [1, 2]); plt.title('Bars'); plt.show()")
    result = ex.results[0]
    assert base64.b64decode(result.png).startswith(PNG_MAGIC)
    assert result.chart.type.value == "bar" and result.chart.title == "Bars"
    assert [(e.label, e.value) for e in result.chart.elements] == [("a", 1), ("b", 2)]
    line = ci.run_code("plt.plot([0, 1], [1, 3]); plt.show()").results[0].chart
    assert line.type.value == "line" and line.elements[0].points == [(0, 1), (1, 3)]


def test_contexts_languages_and_env(ci):
    ctx = ci.create_code_context(cwd="/tmp")
    assert ctx.cwd == "/tmp" and ctx.language == "python"
    assert ci.run_code("import os; os.getcwd()", context=ctx).text == "'/tmp'"
    assert ctx.id in [c.id for c in ci.list_code_contexts()]
    ci.restart_code_context(ctx)
    ci.remove_code_context(ctx)
    bash = ci.run_code("echo $GREETING from bash", language="bash", envs={"GREETING": "hi"})
    assert bash.logs.stdout == ["hi from bash\n"]


def test_the_sdks_timeout_interrupts_and_the_context_survives(ci):
    ci.run_code("survivor = 'yes'")
    with pytest.raises(TimeoutException):
        ci.run_code("import time; time.sleep(600)", timeout=2)
    # The SDK hung up; the server interrupted the kernel, so the next cell runs at once.
    assert ci.run_code("survivor", timeout=60).text == "'yes'"


async def test_the_async_sdk(code_interpreter, server_env):
    sbx = await AsyncSandbox.create()
    try:
        seen = []
        ex = await sbx.run_code("print('a'); 1 + 1", on_stdout=lambda m: seen.append(m.line))
        assert ex.text == "2" and seen == ["a\n"]
    finally:
        await sbx.kill()
