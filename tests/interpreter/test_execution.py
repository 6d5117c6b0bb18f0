"""Running code through the code interpreter, driven with hutch's SDK against real kernels in a
real sandbox: state, streaming, rich results, errors, timeouts, kernel death, env vars."""

from __future__ import annotations

import base64
import threading
import time

import pytest

from hutch import errors

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_state_persists_and_the_last_value_is_the_main_result(ci):
    first = ci.run_code("counter = 40\ncounter += 1\nprint('side effect')\ncounter + 1")
    assert first.error is None
    assert first.text == "42"
    assert first.logs.stdout == ["side effect\n"]
    second = ci.run_code("counter")
    assert second.text == "41"
    assert second.execution_count == first.execution_count + 1


def test_output_streams_while_the_cell_runs(ci):
    # The cell prints, then waits for a file that only the stdout callback creates: it can
    # finish only if the first line reached us while it was still running.
    ci.files.write("/tmp/go", "", user="root")
    ci.commands.run("rm -f /tmp/go", user="root")
    seen: list[str] = []

    def on_stdout(msg):
        seen.append(msg.line)
        if msg.line.startswith("first"):
            ci.files.write("/tmp/go", "go")

    run = ci.run_code(
        "import os, time\nprint('first', flush=True)\n"
        "while not os.path.exists('/tmp/go'): time.sleep(0.05)\nprint('second')",
        on_stdout=on_stdout, timeout=60)
    assert run.error is None, run.error
    assert seen == ["first\n", "second\n"]


def test_stderr_and_callbacks(ci):
    out, err, results = [], [], []
    run = ci.run_code("import sys\nprint('o')\nprint('e', file=sys.stderr)\n7*6",
                      on_stdout=out.append, on_stderr=err.append, on_result=results.append)
    assert [m.line for m in out] == ["o\n"] and not out[0].error
    assert [m.line for m in err] == ["e\n"] and err[0].error
    assert [r.text for r in results] == ["42"] and results[0].is_main_result


def test_every_rich_format_comes_back(ci):
    run = ci.run_code(
        "from IPython.display import display, HTML, Markdown, SVG, Latex, JSON, Javascript, Image\n"
        "import base64\n"
        "display(HTML('<b>h</b>'))\n"
        "display(Markdown('**m**'))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"><circle r=\"1\"/></svg>'))\n"
        "display(Latex(r'$x^2$'))\n"
        "display(JSON({'k': [1, 2]}))\n"
        "display(Javascript('console.log(1)'))\n"
        "import matplotlib.pyplot as plt\n"
        "fig = plt.figure(); plt.plot([1, 2]); fig.savefig('/tmp/p.jpg'); fig.savefig('/tmp/p.pdf'); plt.close(fig)\n"
        "display(Image(filename='/tmp/p.jpg'))\n"
        "display({'application/pdf': base64.b64encode(open('/tmp/p.pdf','rb').read()).decode(), 'text/plain': 'pdf'}, raw=True)\n"
        "'done'")
    assert run.error is None, run.error
    by = {f: r for r in run.results for f in r.formats()}
    assert by["html"].html == "<b>h</b>"
    assert by["markdown"].markdown == "**m**"
    assert "<circle" in by["svg"].svg
    assert by["latex"].latex == "$x^2$"
    assert by["json"].json == {"k": [1, 2]}
    assert by["javascript"].javascript == "console.log(1)"
    assert base64.b64decode(by["jpeg"].jpeg)[:2] == b"\xff\xd8"
    assert base64.b64decode(by["pdf"].pdf)[:4] == b"%PDF"
    assert sum(not r.is_main_result for r in run.results) >= 8
    assert run.text == "'done'"


def test_plots_from_show_and_from_an_open_figure_with_chart_data(ci, tmp_path):
    shown = ci.run_code("import matplotlib.pyplot as plt\n"
                        "plt.plot([1, 2, 3], [4, 5, 6], label='up'); plt.title('T'); "
                        "plt.xlabel('x'); plt.ylabel('y'); plt.show()")
    open_fig = ci.run_code("plt.figure(); plt.bar(['a', 'b'], [3, 4])")
    for run in (shown, open_fig):
        images = [r for r in run.results if r.png]
        assert len(images) == 1, run
        assert base64.b64decode(images[0].png).startswith(PNG_MAGIC)
    line = next(r for r in shown.results if r.png).chart
    assert line.type == "line" and line.title == "T"
    assert (line.x_label, line.y_label) == ("x", "y")
    assert line.elements == [{"label": "up", "points": [[1, 4], [2, 5], [3, 6]]}]
    image = next(r for r in open_fig.results if r.png)
    assert image.chart.type == "bar"
    assert [(e["label"], e["value"]) for e in image.chart.elements] == [("a", 3), ("b", 4)]
    saved = image.save(tmp_path / "chart.png")
    assert saved.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("code, kind, check", [
    ("plt.scatter([1, 2], [3, 4])", "scatter",
     lambda c: c.elements[0]["points"] == [[1.0, 3.0], [2.0, 4.0]]),
    ("plt.pie([1, 3], labels=['a', 'b'])", "pie",
     lambda c: [(e["label"], round(e["angle"])) for e in c.elements] == [("a", 90), ("b", 270)]),
    ("plt.boxplot([[1, 2, 3, 4, 5, 50]])", "box_and_whisker",
     lambda c: c.elements[0]["median"] == 3.5 and c.elements[0]["outliers"] == [50]),
    ("f, (a, b) = plt.subplots(1, 2); a.plot([1, 2]); b.bar([1], [2]); f.suptitle('both')",
     "superchart", lambda c: [e.type for e in c.elements] == ["line", "bar"] and c.title == "both"),
    ("import datetime as dt\nplt.plot([dt.date(2024, 1, 1), dt.date(2024, 1, 2)], [1, 2])\n"
     "plt.yscale('log')", "line",
     lambda c: (c.x_scale, c.y_scale) == ("datetime", "log")
     and [p[0][:10] for p in c.elements[0]["points"]] == ["2024-01-01", "2024-01-02"]),
    ("import pandas as pd\n"
     "pd.Series([1, 3], index=pd.date_range('2024-01-01', periods=2)).plot()", "line",
     lambda c: c.x_scale == "datetime"
     and c.elements[0]["points"] == [["2024-01-01T00:00:00", 1.0], ["2024-01-02T00:00:00", 3.0]]),
])
def test_chart_types(ci, code, kind, check):
    run = ci.run_code("import matplotlib.pyplot as plt\nplt.figure()\n" + code + "\nplt.show()")
    charts = [r.chart for r in run.results if r.chart is not None]
    assert len(charts) == 1, run
    assert charts[0].type == kind
    assert check(charts[0]), charts[0].to_dict()


def test_dataframes_as_html_text_and_data(ci):
    run = ci.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    main = run.results[0]
    assert main.is_main_result and "<table" in main.html and "a" in main.text
    assert main.data == {"a": [1, 2], "b": ["x", "y"]}


def test_exceptions_come_back_as_errors_not_failures(ci):
    run = ci.run_code("def f():\n    raise ValueError('bad value')\nf()")
    assert run.error.name == "ValueError"
    assert run.error.value == "bad value"
    assert "f()" in run.error.traceback
    assert ci.run_code("1 + 1").text == "2"       # the context is still fine


def test_timeout_interrupts_and_keeps_the_state(ci):
    ci.run_code("kept = 'still here'")
    run = ci.run_code("import time\nprint('started', flush=True)\ntime.sleep(600)", timeout=2)
    assert run.error.name == "TimeoutError"
    assert "interrupted" in run.error.value and "kept" in run.error.value
    assert run.logs.stdout == ["started\n"]
    assert ci.run_code("kept").text == "'still here'"


def test_per_execution_env_vars_are_set_then_restored(ci):
    run = ci.run_code("import os; os.environ['ONLY_NOW'], os.getcwd()", envs={"ONLY_NOW": "yes"})
    assert run.text == "('yes', '/home/user')"
    assert ci.run_code("import os; os.environ.get('ONLY_NOW', 'unset')").text == "'unset'"
    bash = ci.run_code("echo ${ONLY_NOW:-unset}", language="bash", envs={"ONLY_NOW": "b"})
    assert bash.logs.stdout == ["b\n"]
    assert ci.run_code("echo ${ONLY_NOW:-unset}", language="bash").logs.stdout == ["unset\n"]


def test_a_dead_kernel_is_reported_and_replaced(code_interpreter):
    hutch_server = code_interpreter
    from hutch import Sandbox

    with Sandbox.create(template="code-interpreter", url=hutch_server.url,
                        api_key=hutch_server.api_key) as sbx:
        try:
            sbx.run_code("lost = 1")
            died = sbx.run_code("import os; os._exit(9)")
            assert died.error.name == "KernelDiedError"
            assert "state is lost" in died.error.value
            after = sbx.run_code("'lost' in globals()")
            assert after.text == "False"
            assert any("new kernel" in line for line in after.logs.stderr)
            assert sbx.run_code("1 + 1").text == "2"
        finally:
            sbx.kill()


def test_bash_keeps_its_shell_state(ci):
    ci.run_code("cd /tmp && export KEPT=1 && x=5", language="bash")
    run = ci.run_code("echo $PWD $KEPT $x", language="bash")
    assert run.logs.stdout == ["/tmp 1 5\n"]
    failed = ci.run_code("false", language="bash")
    assert failed.error is not None


def test_contexts_are_independent_and_have_their_own_cwd(ci):
    a = ci.create_code_context(cwd="/tmp")
    b = ci.create_code_context()
    assert (a.language, a.cwd, b.cwd) == ("python", "/tmp", "/home/user")
    ci.run_code("v = 'a'", context=a)
    ci.run_code("v = 'b'", context=b)
    assert ci.run_code("v, __import__('os').getcwd()", context=a).text == "('a', '/tmp')"
    assert ci.run_code("v", context=b).text == "'b'"
    ids = {c.id for c in ci.list_code_contexts()}
    assert {a.id, b.id} <= ids
    ci.restart_code_context(a)
    assert ci.run_code("'v' in globals()", context=a).text == "False"
    ci.remove_code_context(b)
    assert b.id not in {c.id for c in ci.list_code_contexts()}
    with pytest.raises(errors.NotFoundError):
        ci.run_code("1", context=b)
    ci.remove_code_context(a)


def test_one_context_runs_in_order_others_in_parallel(ci):
    a = ci.create_code_context()
    b = ci.create_code_context()
    ci.run_code("order = []", context=a)
    ci.commands.run("rm -f /tmp/release", user="root")
    started = threading.Event()
    results: dict = {}

    def first():
        results["first"] = ci.run_code(
            "import os, time\nprint('waiting', flush=True)\n"
            "while not os.path.exists('/tmp/release'): time.sleep(0.05)\norder.append(1)",
            context=a, on_stdout=lambda m: started.set(), timeout=60)

    def second():
        results["second"] = ci.run_code("order.append(2); order", context=a, timeout=60)

    t1 = threading.Thread(target=first)
    t1.start()
    assert started.wait(60)
    t2 = threading.Thread(target=second)
    t2.start()
    # Context b is not blocked by a's running cell: it is what releases it.
    ci.run_code("open('/tmp/release', 'w').close()", context=b, timeout=60)
    t1.join(60)
    t2.join(60)
    assert results["first"].error is None
    assert results["second"].text == "[1, 2]"
    ci.remove_code_context(a)
    ci.remove_code_context(b)


def test_a_cell_that_ignores_the_interrupt_gets_a_new_kernel(ci):
    ctx = ci.create_code_context()
    ci.run_code("before = 1", context=ctx)
    run = ci.run_code("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                      "time.sleep(600)", context=ctx, timeout=1)
    assert run.error.name == "TimeoutError"
    assert "restarted" in run.error.value and "state is lost" in run.error.value
    after = ci.run_code("'before' in globals()", context=ctx)
    assert after.text == "False"
    ci.remove_code_context(ctx)


@pytest.mark.parametrize("code", [
    "import ctypes; ctypes.string_at(0)",                      # a segfault
    "blocks = []\nwhile True: blocks.append(bytearray(64 * 2**20))",   # the OOM killer
])
def test_crashes_and_oom_are_kernel_deaths(code_interpreter, code):
    hutch_server = code_interpreter
    from hutch import Sandbox

    with Sandbox.create(template="code-interpreter", url=hutch_server.url,
                        api_key=hutch_server.api_key, memory_mb=512) as sbx:
        try:
            run = sbx.run_code(code, timeout=120)
            assert run.error is not None and run.error.name == "KernelDiedError", run
            assert sbx.run_code("6 * 7", timeout=120).text == "42"
        finally:
            sbx.kill()


def test_output_without_a_newline_from_threads_and_subprocesses_arrives_before_the_end(ci):
    # Written to sys.stdout (buffered by the kernel), from another thread, and by processes
    # the cell started (into the pipe that is the kernel's fd 1 and 2): all of it is in the
    # execution, every time, before its end.
    for _ in range(20):
        run = ci.run_code(
            "import os, sys, threading\n"
            "print('a', end='')\n"
            "sys.stdout.flush(); sys.stdout.flush()\n"          # a flush with nothing left
            "t = threading.Thread(target=lambda: print('b', end='')); t.start(); t.join()\n"
            "os.system('printf c; printf e >&2')\n"
            "print('d', end='', file=sys.stderr)\n"
            "'done'")
        assert run.error is None, run.error
        assert "".join(run.logs.stdout) == "abc"
        assert sorted("".join(run.logs.stderr)) == ["d", "e"]
        assert run.text == "'done'"


def test_results_from_threads_and_the_main_thread_all_arrive_in_order(ci):
    # The kernel's messages are sent by the thread that makes them: from several threads at
    # once every one of them still arrives, each thread's in its own order, the cell's
    # output before its end.
    run = ci.run_code(
        "import threading\n"
        "from IPython.display import display\n"
        "def show(tag):\n"
        "    for i in range(100): display({'application/json': {'tag': tag, 'i': i}}, raw=True)\n"
        "threads = [threading.Thread(target=show, args=(t,)) for t in 'abc']\n"
        "for t in threads: t.start()\n"
        "show('main')\n"
        "for t in threads: t.join()\n"
        "print('end')\n"
        "'done'", timeout=120)
    assert run.error is None, run.error
    got = {}
    for result in run.results:
        if result.json is not None:
            got.setdefault(result.json["tag"], []).append(result.json["i"])
    assert got == {tag: list(range(100)) for tag in ("a", "b", "c", "main")}
    assert "".join(run.logs.stdout) == "end\n" and run.text == "'done'"


def test_an_interrupt_while_results_stream_out_leaves_the_kernel_whole(ci):
    # Interrupted (the execution's timeout) while it sends result after result: every one
    # sent arrives, in order (those still on their way when the interrupt went out too),
    # and the kernel goes on answering with its state.
    for _ in range(3):
        run = ci.run_code(
            "from IPython.display import display\n"
            "n = 0\n"
            "while True:\n"
            "    display({'application/json': {'n': n}}, raw=True); n += 1", timeout=1)
        assert run.error is not None and run.error.name == "TimeoutError", run.error
        seen = [r.json["n"] for r in run.results if r.json is not None]
        assert seen and seen == list(range(len(seen)))
        # The interrupt may land after a result went out and before n counted it.
        assert ci.run_code("n").text in (str(len(seen) - 1), str(len(seen)))


def test_a_client_that_reads_slowly_loses_no_result_and_the_cell_ends(ci):
    # The cell displays results (160 MB in all) far faster than this client takes them: its
    # first callback holds the stream until the cell has stopped making progress (waiting
    # for room) or has made every result. Everything must arrive, in order, and the cell's
    # end with it; a kernel that dropped what its reader could not yet take lost results
    # and, with the `idle` that ends the cell among them, never ended.
    count = 2500
    ci.commands.run("rm -f /tmp/progress", user="root")    # the kernel (root) wrote it
    held = []

    def progress() -> str:
        try:
            return ci.files.read("/tmp/progress")
        except errors.NotFoundError:
            return ""

    def on_result(result):
        if held:
            return
        held.append(result)
        last, since, deadline = progress(), time.monotonic(), time.monotonic() + 120
        while last != "done" and time.monotonic() - since < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            now = progress()
            if now != last:
                last, since = now, time.monotonic()

    run = ci.run_code(
        "from IPython.display import display\n"
        "pad = 'x' * 65536\n"
        f"for n in range({count}):\n"
        "    display({'application/json': {'n': n, 'pad': pad}}, raw=True)\n"
        "    if n % 50 == 0: open('/tmp/progress', 'w').write(str(n))\n"
        "open('/tmp/progress', 'w').write('done')\n"
        "'finished'", on_result=on_result, timeout=120)
    assert run.error is None, run.error
    seen = [r.json["n"] for r in run.results if r.json is not None]
    assert seen == list(range(count)), f"{len(seen)} of {count} results arrived"
    assert run.text == "'finished'"


def test_an_interrupt_never_cuts_a_message_in_half(ci):
    # A message is several ZeroMQ frames; an interrupt (KeyboardInterrupt in the kernel's
    # main thread) arriving between two of them must wait for the message to be out, or the
    # rest of it would be joined to the next message and both lost. The kernel's IOPub socket
    # is wrapped here to signal the interrupt right after a message's first frame.
    run = ci.run_code(
        "import os, signal, zmq\n"
        "from IPython.display import display\n"
        "pub = get_ipython().kernel.iopub_thread\n"
        "real = pub.socket\n"
        "class InterruptedMidway:\n"
        "    def __getattr__(self, name): return getattr(real, name)\n"
        "    def send_multipart(self, msg, *args, **kwargs):\n"
        "        real.send(msg[0], zmq.SNDMORE)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        for _ in range(100000): pass\n"
        "        real.send_multipart(msg[1:], *args, **kwargs)\n"
        "pub.socket = InterruptedMidway()\n"
        "try:\n"
        "    display({'application/json': {'x': 1}}, raw=True)\n"
        "except KeyboardInterrupt:\n"
        "    outcome = 'interrupted after the message'\n"
        "else:\n"
        "    outcome = 'not interrupted'\n"
        "finally:\n"
        "    pub.socket = real\n"
        "display({'application/json': {'x': 2}}, raw=True)\n"
        "outcome", timeout=60)
    assert run.error is None, run.error
    assert [r.json for r in run.results if r.json is not None] == [{"x": 1}, {"x": 2}]
    assert run.text == "'interrupted after the message'"


def test_a_top_level_await_cell_runs_and_returns_its_value(ci):
    run = ci.run_code("import asyncio\nawaited = await asyncio.sleep(0, result=6)\nawaited * 7")
    assert run.error is None, run.error
    assert run.text == "42"
    assert ci.run_code("awaited").text == "6"


def test_the_sessions_history_without_a_history_database(ci):
    ctx = ci.create_code_context()
    try:
        ci.run_code("a = 1", context=ctx)
        ci.run_code("a + 1", context=ctx)
        run = ci.run_code("print(In[1], '|', _i2, '|', Out[2])\n%history -n 1-2", context=ctx)
        assert run.error is None, run.error
        assert "".join(run.logs.stdout) == "a = 1 | a + 1 | 2\n   1: a = 1\n   2: a + 1\n"
        # What cells printed, displayed and returned is not kept a second time (IPython 9
        # would keep all of it for the kernel's life): only Out holds the values.
        ci.run_code("for i in range(100): print('x' * 10000)\n"
                    "from IPython.display import display; display({'text/plain': 'y'}, raw=True)",
                    context=ctx)
        run = ci.run_code("dict(get_ipython().history_manager.outputs), Out", context=ctx)
        assert run.text == "({}, {2: 2})", run.text
    finally:
        ci.remove_code_context(ctx)


def test_a_kernel_the_template_installs_the_usual_way_is_found(ci):
    # An "ir" kernel spec in Jupyter's system directory (here ipykernel's own launcher, stock:
    # none of the interpreter's settings) serves language="r".
    spec = {"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "R (stand-in)", "language": "R"}
    path = "/usr/local/share/jupyter/kernels/ir/kernel.json"
    ci.files.write(path, __import__("json").dumps(spec), user="root")
    try:
        run = ci.run_code("import sys; print(sys.argv[0].endswith('ipykernel_launcher.py')); 6*7",
                          language="r")
        assert run.error is None, run.error
        assert run.logs.stdout == ["True\n"] and run.text == "42"
        assert ci.run_code("6*7", language="r").execution_count == 2
    finally:
        ci.commands.run("rm -rf /usr/local/share/jupyter/kernels/ir", user="root")


def test_kernels_get_the_sandbox_environment_as_root_and_none_of_the_agents(code_interpreter):
    hutch_server = code_interpreter
    from hutch import Sandbox

    with Sandbox.create(template="code-interpreter", url=hutch_server.url,
                        api_key=hutch_server.api_key, envs={"SANDBOX_WIDE": "yes"}) as sbx:
        try:
            run = sbx.run_code(
                "import os, importlib.util\n"
                "(os.environ.get('SANDBOX_WIDE'), os.environ.get('HOME'), os.getuid(),\n"
                " 'PYTHONPATH' in os.environ, importlib.util.find_spec('hutch') is None)")
            assert run.error is None, run.error
            assert run.text == "('yes', '/root', 0, False, True)"
            bash = sbx.run_code("echo $SANDBOX_WIDE ${PYTHONPATH:-none}", language="bash")
            assert bash.logs.stdout == ["yes none\n"]
        finally:
            sbx.kill()
