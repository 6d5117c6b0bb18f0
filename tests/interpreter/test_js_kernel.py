"""The JavaScript kernel (js_kernel.py + node_repl.js).

Two layers: the cell rewriting (declarations that persist, top-level await, imports) checked
directly with the host's ``node`` when there is one, and the whole kernel driven through the
official E2B code-interpreter SDK in a real code-interpreter sandbox (Node.js 18 there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import hutch

REPL = Path(hutch.__file__).resolve().parent / "agent" / "interpreter" / "node_repl.js"
NODE = shutil.which("node")

# Compiles and runs cells one after another the way the kernel does, in one node process, and
# prints what each produced: {"data": bundle-or-null} or {"error": {...}}.
HARNESS = r"""
const repl = require(process.argv[1]);
let input = '';
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', async () => {
  const out = [];
  for (const code of JSON.parse(input)) {
    try {
      const { script } = repl.compile(code, '<cell 1>');
      let value = script.runInThisContext();
      if (value && typeof value.then === 'function') value = await value;
      out.push({ data: repl.bundle(value) });
    } catch (e) {
      out.push({ error: repl.describeError(e) });
    }
  }
  process.stdout.write(JSON.stringify(out));
});
"""

needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed on this machine")


def cells(*codes: str) -> list:
    """Each cell's text/plain result (None when it has none), or ("error", ename, evalue)."""
    proc = subprocess.run([NODE, "-e", HARNESS, str(REPL)], input=json.dumps(codes),
                          capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr
    out = []
    for item in json.loads(proc.stdout):
        if "error" in item:
            out.append(("error", item["error"]["ename"], item["error"]["evalue"]))
        else:
            out.append((item["data"] or {}).get("text/plain"))
    return out


# -- rewriting, on the host's node ------------------------------------------------------------

@needs_node
def test_top_level_declarations_persist_and_can_be_declared_again():
    assert cells(
        "let a = 1; const b = 2; class C { v() { return a + b } }; function f() { return 'f' }",
        "new C().v() + f()",
        "let a = 10; const b = 20; class C { v() { return a * b } }\nnew C().v()",
    ) == [None, "'3f'", "200"]


@needs_node
def test_await_cells_keep_their_declarations_and_return_their_last_expression():
    assert cells(
        "const {p, q: [r = 3], ...rest} = await Promise.resolve({p: 1, q: [], z: 9})\n"
        "let s\nfunction g() { return p + r }\nclass K { static k = 5 }",
        "[p, r, rest, s, g(), K.k]",
        "await 0\n1 +\n2",
        "const o = await {a: 1};\no",
        "await 0\n'a;b' // c ;\n",
        "const t = await 1\nif (t) { 5 }",
        "await 0\nlet z = 4",
        "z",
        "await new Promise((r) => setTimeout(r, 10)); Promise.resolve('awaited')",
    ) == [None, "[ 1, 3, { z: 9 }, undefined, 4, 5 ]", "3", "{ a: 1 }", "'a;b'", None, None,
          "4", "'awaited'"]


@needs_node
def test_code_that_only_looks_like_declarations_is_left_alone():
    assert cells(
        "const s = 'let x = 1; class Y {}'; const re = /let [a-z]/; `${s} ${re.test(s)}`",
        "typeof x + typeof Y",
        "{ let inner = 1 }\nfor (let i = 0; i < 2; i++) {}\ntypeof inner + typeof i",
        "const half = 4 / 2, q = `${half}}{`; q",
    ) == ["'let x = 1; class Y {} true'", "'undefinedundefined'", "'undefinedundefined'",
          "'2}{'"]


@needs_node
def test_static_and_dynamic_imports():
    assert cells(
        "import {join} from 'path'\nimport * as os from 'node:os'\nimport u from 'util'\n"
        "join('a', 'b')",
        "typeof os.platform + typeof u.inspect",
        "import('fs').then((m) => typeof m.readFileSync)",
    ) == ["'a/b'", "'functionfunction'", "'function'"]


@needs_node
def test_errors_name_and_message():
    out = cells("let = ;", "await (", "nope + 1", "throw 5")
    assert out[0][:2] == ("error", "SyntaxError")
    assert out[1][:2] == ("error", "SyntaxError")
    assert out[2] == ("error", "ReferenceError", "nope is not defined")
    assert out[3] == ("error", "Uncaught", "5")


@needs_node
def test_mime_bundles_are_shown_as_such():
    assert cells("({'text/html': '<b>x</b>'})", "({'a/b': 1, c: 2})") == [
        None, "{ 'a/b': 1, c: 2 }"]


# -- the kernel in a sandbox, through the E2B SDK ---------------------------------------------

@pytest.fixture(scope="module")
def js(code_interpreter):
    from e2b_code_interpreter import Sandbox

    hutch_server = code_interpreter
    with pytest.MonkeyPatch.context() as mp:
        for key, value in hutch_server.env.items():
            mp.setenv(key, value)
        mp.delenv("E2B_DEBUG", raising=False)
        mp.delenv("E2B_DOMAIN", raising=False)
        sbx = Sandbox.create(metadata={"suite": "js-kernel"})
        try:
            yield sbx
        finally:
            sbx.kill()


def run(sbx, code: str, **kwargs):
    if "context" not in kwargs:
        kwargs["language"] = "javascript"
    return sbx.run_code(code, **kwargs)


@pytest.mark.slow
def test_state_persists_across_cells(js):
    first = run(js, "let n = 40; const k = 1; function add(a, b) { return a + b }\n"
                    "class Box { constructor(v) { this.v = v } }")
    assert first.error is None, first.error
    assert first.results == []
    assert run(js, "add(n, k) + new Box(1).v").text == "42"
    # Running the first cell again is fine: declarations may be repeated.
    assert run(js, "let n = 1; const k = 2\nadd(n, k)").text == "3"
    assert run(js, "n").text == "1"


@pytest.mark.slow
def test_console_output_streams_while_the_cell_runs(js):
    # The cell logs, then waits for a file that only the stdout callback creates: it can
    # finish only if the first line reached us while it was still running.
    js.commands.run("rm -f /tmp/js-go", user="root")
    seen: list[str] = []

    def on_stdout(msg):
        seen.append(msg.line)
        if msg.line.startswith("first"):
            js.files.write("/tmp/js-go", "go")

    ex = run(js, "const fs = require('fs')\nconsole.log('first')\n"
                 "while (!fs.existsSync('/tmp/js-go')) await new Promise((r) => setTimeout(r, 50))\n"
                 "console.log('second')", on_stdout=on_stdout, timeout=60)
    assert ex.error is None, ex.error
    assert seen == ["first\n", "second\n"]


@pytest.mark.slow
def test_stdout_stderr_and_child_output_come_before_the_result(js):
    events = []
    ex = run(js, "for (let i = 0; i < 3; i++) console.log('line', i)\n"
                 "console.error('warn')\n"
                 "require('child_process').execSync('echo from-child', {stdio: 'inherit'})\n"
                 "process.stdout.write('tail'); 'value'",
             on_stdout=lambda m: events.append(("out", m.line)),
             on_stderr=lambda m: events.append(("err", m.line)),
             on_result=lambda r: events.append(("result", r.text)))
    assert ex.error is None, ex.error
    assert "".join(ex.logs.stdout) == "line 0\nline 1\nline 2\nfrom-child\ntail"
    assert ex.logs.stderr == ["warn\n"]
    assert events[-1] == ("result", "'value'")
    assert ex.text == "'value'"


@pytest.mark.slow
def test_output_larger_than_a_pipe_all_comes_before_the_cell_ends(js):
    # More than node's stdout pipe holds (64 KiB), from node and from a child process that
    # shares the pipe: none of it may be held back past the cell's end (it would belong to no
    # cell), and the child must not find the pipe full and fail its write.
    ex = run(js, r"""const pad = 'x'.repeat(16000)
for (let i = 0; i < 100; i++) console.log(i, pad)
require('child_process').execFileSync('python3', ['-c',
  "import sys; sys.stdout.write('child ' + 'y' * 1000000 + '\\n')"], {stdio: 'inherit'})
console.log('end'); 'value'""", timeout=60)
    assert ex.error is None, ex.error
    assert ex.logs.stderr == []
    lines = "".join(ex.logs.stdout).splitlines()
    assert [line.split()[0] for line in lines] == [*map(str, range(100)), "child", "end"]
    assert lines[0] == "0 " + "x" * 16000 and lines[100] == "child " + "y" * 1000000
    assert ex.text == "'value'"


@pytest.mark.slow
def test_results_await_and_rich_values(js):
    assert run(js, "await new Promise((r) => setTimeout(r, 100)); 5").text == "5"
    assert run(js, "Promise.resolve({a: [1, {b: 2}]})").text == "{ a: [ 1, { b: 2 } ] }"
    assert run(js, "undefined").results == []
    assert run(js, "const r = await Promise.resolve('s'); r + '!'").text == "'s!'"
    html = run(js, "({'text/html': '<b>x</b>', 'text/plain': 'x'})")
    assert html.results[0].html == "<b>x</b>" and html.results[0].is_main_result
    shown = run(js, "display({'text/markdown': '**m**'}); display.html('<i>h</i>'); 1")
    assert [r.markdown or r.html for r in shown.results if not r.is_main_result] == [
        "**m**", "<i>h</i>"]
    assert shown.text == "1"


@pytest.mark.slow
def test_errors_are_mapped_and_the_kernel_stays_usable(js):
    ex = run(js, "function deep() { return missingName + 1 }\ndeep()")
    assert ex.error is not None
    assert ex.error.name == "ReferenceError"
    assert ex.error.value == "missingName is not defined"
    assert "ReferenceError: missingName is not defined" in ex.error.traceback
    assert "at deep (<cell" in ex.error.traceback
    assert "node_repl" not in ex.error.traceback
    assert run(js, "throw new TypeError('bad type')").error.name == "TypeError"
    assert run(js, "await Promise.reject(new RangeError('later'))").error.value == "later"
    assert run(js, "let = ;").error.name == "SyntaxError"
    assert run(js, "1 + 1").text == "2"


@pytest.mark.slow
def test_require_builtins_and_installed_modules(js):
    js.files.write("/home/user/node_modules/hutch-local/index.js", "module.exports = 41;")
    js.files.write("/usr/local/lib/node_modules/hutch-global/index.js",
                   "module.exports = 'global';", user="root")
    ex = run(js, "const fs2 = require('fs'); fs2.writeFileSync('/tmp/js.txt', 'hi');"
                 "fs2.readFileSync('/tmp/js.txt', 'utf8')")
    assert ex.text == "'hi'"
    assert run(js, "require('hutch-local') + 1").text == "42"
    assert run(js, "require('hutch-global')").text == "'global'"
    assert run(js, "import {join} from 'path'\njoin('a', 'b')").text == "'a/b'"
    assert run(js, "require('no-such-module-here')").error.value.startswith(
        "Cannot find module 'no-such-module-here'")


@pytest.mark.slow
def test_cwd_chdir_and_env(js):
    assert run(js, "process.cwd()").text == "'/home/user'"
    ctx = js.create_code_context(language="javascript", cwd="/tmp")
    try:
        assert run(js, "process.cwd()", context=ctx).text == "'/tmp'"
        assert run(js, "process.chdir('/etc'); process.env.JS_KEPT = 'v'", context=ctx).error is None
        assert run(js, "[process.cwd(), process.env.JS_KEPT]", context=ctx).text == "[ '/etc', 'v' ]"
        once = run(js, "process.env.JS_ONCE", context=ctx, envs={"JS_ONCE": "1"})
        assert once.text == "'1'"
        assert run(js, "process.env.JS_ONCE", context=ctx).results == []
    finally:
        js.remove_code_context(ctx)
    assert run(js, "process.cwd()").text == "'/home/user'"


@pytest.mark.slow
def test_timeout_interrupts_a_busy_loop_and_keeps_the_state(js):
    from e2b.exceptions import TimeoutException

    assert run(js, "let keep = 'kept'").error is None
    with pytest.raises(TimeoutException):
        run(js, "while (true) {}", timeout=3)
    assert run(js, "keep").text == "'kept'"
    with pytest.raises(TimeoutException):
        run(js, "await new Promise((r) => setTimeout(r, 600000))", timeout=3)
    assert run(js, "keep").text == "'kept'"
    with pytest.raises(TimeoutException):
        run(js, "require('child_process').execSync('sleep 600')", timeout=3)
    assert run(js, "keep").text == "'kept'"


@pytest.mark.slow
def test_a_loop_that_cannot_be_interrupted_restarts_node_and_says_so(js):
    from e2b.exceptions import TimeoutException

    ctx = js.create_code_context(language="javascript")
    try:
        assert run(js, "let lost = 1", context=ctx).error is None
        with pytest.raises(TimeoutException):
            run(js, "require('child_process').spawn('sleep', ['6001'])\n"
                    "await 0; while (true) {}", context=ctx, timeout=3)
        after = run(js, "typeof lost", context=ctx)
        assert after.text == "'undefined'"
        assert "restarted" in "".join(after.logs.stderr)
        # The processes the old node had started went with it.
        procs = js.commands.run("ps -eo args=", user="root").stdout.splitlines()
        assert "sleep 6001" not in [p.strip() for p in procs]
        assert run(js, "let lost = 2; lost", context=ctx).text == "2"
        died = run(js, "process.exit(3)", context=ctx)
        assert died.error.name == "NodeExited" and "status 3" in died.error.value
        assert run(js, "typeof lost", context=ctx).text == "'undefined'"
    finally:
        js.remove_code_context(ctx)
