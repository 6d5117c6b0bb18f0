"""The SDK's code-interpreter calls in a real code-interpreter sandbox: the iterator form,
callbacks (plain and awaitable), contexts by object or id, and result helpers."""

from __future__ import annotations

import pytest

from hutch import AsyncSandbox, errors
from hutch.sdk import Execution, ExecutionError, OutputMessage, Result


@pytest.fixture(scope="module")
async def sbx(code_interpreter, module_opts):
    sandbox = await AsyncSandbox.create(template="code-interpreter", timeout=600,
                                        metadata={"suite": "sdk-code"}, **module_opts)
    try:
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


async def test_events_arrive_in_order_from_the_iterator(sbx):
    events = []
    async for event in sbx.run_code_stream("print('one')\ndisplay('two')\n1/0"):
        events.append(event)
    kinds = [type(e) for e in events]
    assert kinds == [OutputMessage, Result, ExecutionError]
    assert events[0].line == "one\n" and not events[0].error
    assert events[1].text == "'two'" and not events[1].is_main_result
    assert events[2].name == "ZeroDivisionError"


async def test_callbacks_may_be_coroutines(sbx):
    seen = []

    async def on_stdout(msg):
        seen.append(msg.line)

    execution = await sbx.run_code("print('x')\n'y'", on_stdout=on_stdout,
                                   on_result=lambda r: seen.append(r.text))
    assert isinstance(execution, Execution)
    assert seen == ["x\n", "'y'"]
    assert execution.text == "'y'" and execution.logs.stdout == ["x\n"]


async def test_contexts_by_object_or_id(sbx):
    ctx = await sbx.create_code_context(language="bash", cwd="/tmp")
    assert (ctx.language, ctx.cwd) == ("bash", "/tmp")
    run = await sbx.run_code("pwd", context=ctx.id)
    assert run.logs.stdout == ["/tmp\n"]
    await sbx.restart_code_context(ctx.id)
    await sbx.remove_code_context(ctx)
    with pytest.raises(errors.NotFoundError):
        await sbx.remove_code_context(ctx)


async def test_result_formats_and_save(sbx, tmp_path):
    run = await sbx.run_code("from IPython.display import HTML\nHTML('<i>x</i>')")
    result = run.results[0]
    assert result.formats() == ["text", "html"]
    assert result.save(tmp_path / "r.html").read_text() == "<i>x</i>"
    with pytest.raises(ValueError, match="no 'png'"):
        result.save(tmp_path / "r.png", format="png")
