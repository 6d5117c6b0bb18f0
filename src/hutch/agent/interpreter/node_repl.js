'use strict';
// The Node.js half of hutch's JavaScript kernel (js_kernel.py starts one of these per kernel).
//
// Requests and replies travel as JSON lines over a Unix socket the kernel listens on (argv[2]),
// never over stdout: whatever user code prints (console.log, process.stdout.write, child
// processes that inherit the streams) goes to this process's real stdout/stderr, which the
// kernel forwards as it arrives. The socket is opened by this process, so its descriptor is
// close-on-exec and child processes never hold it.
//
// Cells run in the main context, like Node's own REPL: objects from require()d modules and from
// cells share one set of built-ins (so `instanceof Array` means what it says). To make
// declarations outlive their cell, a cell's top-level `let`/`const` become `var` and a
// top-level `class X {}` becomes `var X = class X {};`: a later cell may then declare the same
// name again (re-running a cell works), at the price of `const` not guarding against
// reassignment and of no temporal dead zone at top level. A cell with top-level `await` (or a
// static `import`) runs inside an async function; its top-level declarations are rewritten
// into assignments to globals so they persist too, and its last expression is returned as the
// cell's value.

const net = require('net');
const path = require('path');
const util = require('util');
const vm = require('vm');
const Module = require('module');
const { pathToFileURL } = require('url');

// User code runs in this very context and may replace any global: keep our own references.
const proc = process;
const stringify = JSON.stringify;
const parseJSON = JSON.parse;
const inspect = util.inspect;
const isNativeError = util.types.isNativeError;
const stderrWrite = process.stderr.write.bind(process.stderr);

// Node makes a pipe non-blocking and keeps in memory what the pipe cannot take at once, so a
// cell could end, and its reply reach the kernel, while the end of its output still waited in
// this process: that output came after the cell's end and belonged to no cell. With the pipes
// blocking, a write returns once the pipe has the bytes (a cell that prints faster than its
// output is read waits, as any program writing to a pipe does), so output, displays and the
// reply reach the kernel in the order they were made. Child processes, which share the pipes,
// find them blocking too, as programs expect of their stdout.
for (const stream of [process.stdout, process.stderr]) {
  if (stream._handle && typeof stream._handle.setBlocking === 'function') {
    stream._handle.setBlocking(true);
  }
}

class Interrupted extends Error {
  constructor(message) {
    super(message);
    this.name = 'Interrupted';
  }
}

// ---------------------------------------------------------------------------------------------
// A tokenizer that knows just enough JavaScript to find a cell's top-level statements: strings,
// template literals, comments, regular expressions and bracket nesting. `depth` is the number
// of open brackets around a token (a closing bracket has its opener's depth).

const PUNCTUATORS = ['>>>=', '...', '===', '!==', '**=', '<<=', '>>=', '>>>', '&&=', '||=',
  '??=', '=>', '==', '!=', '<=', '>=', '&&', '||', '??', '?.', '++', '--', '+=', '-=', '*=',
  '/=', '%=', '&=', '|=', '^=', '**', '<<', '>>'];
// After these words an expression starts, so a `/` opens a regular expression.
const OPERATOR_WORDS = new Set(['return', 'typeof', 'instanceof', 'in', 'of', 'new', 'delete',
  'void', 'throw', 'case', 'do', 'else', 'yield', 'await', 'extends', 'var', 'let', 'const',
  'export', 'import', 'default']);

function isIdentStart(c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c === '_' || c === '$' ||
    c === '\\' || c > '\x7f';
}

function isIdentPart(c) {
  return isIdentStart(c) || (c >= '0' && c <= '9');
}

function isLineBreak(c) {
  return c === '\n' || c === '\r' || c === '\u2028' || c === '\u2029';
}

function tokenize(src) {
  const toks = [];
  const stack = [];   // indexes of open bracket tokens; -1 for a template's `${`
  const n = src.length;
  let i = 0;
  let nl = false;

  const push = (type, start, end) => {
    const tok = { type, start, end, value: src.slice(start, end), nl, depth: stack.length };
    nl = false;
    toks.push(tok);
    return tok;
  };

  const regexAllowed = () => {
    const t = toks[toks.length - 1];
    if (!t) return true;
    if (t.type === 'name') return OPERATOR_WORDS.has(t.value);
    if (t.type === 'punct') return !(t.value === ')' || t.value === ']' || t.value === '++' ||
      t.value === '--');
    return false;
  };

  // Scans template text from i (just after a backquote or a `}` closing `${`).
  const template = (start) => {
    while (i < n) {
      const c = src[i];
      if (c === '\\') { i += 2; continue; }
      if (c === '`') { i++; push('tmpl', start, i); return; }
      if (c === '$' && src[i + 1] === '{') {
        i += 2;
        push('tmpl', start, i);
        stack.push(-1);
        return;
      }
      i++;
    }
    push('tmpl', start, n);
  };

  if (src.startsWith('#!')) {
    while (i < n && !isLineBreak(src[i])) i++;
  }
  while (i < n) {
    const c = src[i];
    const start = i;
    if (isLineBreak(c)) { nl = true; i++; continue; }
    if (c === ' ' || c === '\t' || c === '\v' || c === '\f' || c === '\ufeff' || c === '\xa0' ||
        (c > '\x7f' && /\s/.test(c))) { i++; continue; }
    if (c === '/' && src[i + 1] === '/') {
      while (i < n && !isLineBreak(src[i])) i++;
      continue;
    }
    if (c === '/' && src[i + 1] === '*') {
      const end = src.indexOf('*/', i + 2);
      const stop = end < 0 ? n : end + 2;
      if (/[\n\r\u2028\u2029]/.test(src.slice(i, stop))) nl = true;
      i = stop;
      continue;
    }
    if (c === '"' || c === "'") {
      i++;
      while (i < n && src[i] !== c && !isLineBreak(src[i])) i += src[i] === '\\' ? 2 : 1;
      i = Math.min(i + 1, n);
      push('str', start, i);
      continue;
    }
    if (c === '`') { i++; template(start); continue; }
    if ((c >= '0' && c <= '9') || (c === '.' && src[i + 1] >= '0' && src[i + 1] <= '9')) {
      const m = /^(?:0[xXoObB][0-9a-fA-F_]*n?|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?n?)/
        .exec(src.slice(i, i + 400));
      i += m ? m[0].length : 1;
      push('num', start, i);
      continue;
    }
    if (isIdentStart(c) || (c === '#' && isIdentStart(src[i + 1] || ''))) {
      i++;
      while (i < n && isIdentPart(src[i])) i += src[i] === '\\' ? 2 : 1;
      push('name', start, i);
      continue;
    }
    if (c === '/' && regexAllowed()) {
      let j = i + 1;
      let inClass = false;
      let ok = false;
      while (j < n && !isLineBreak(src[j])) {
        const d = src[j];
        if (d === '\\') { j += 2; continue; }
        if (d === '[') inClass = true;
        else if (d === ']') inClass = false;
        else if (d === '/' && !inClass) { ok = true; break; }
        j++;
      }
      if (ok) {
        i = j + 1;
        while (i < n && isIdentPart(src[i])) i++;
        push('regex', start, i);
        continue;
      }
    }
    if (c === '(' || c === '[' || c === '{') {
      i++;
      push('punct', start, i);
      stack.push(toks.length - 1);
      continue;
    }
    if (c === ')' || c === ']' || c === '}') {
      const open = stack.length ? stack.pop() : undefined;
      if (open === -1) {
        // The end of a template substitution: back to the template's text.
        i++;
        template(start);
        continue;
      }
      i++;
      const tok = push('punct', start, i);
      if (open !== undefined) {
        tok.open = open;
        toks[open].close = toks.length - 1;
      }
      continue;
    }
    let p = c;
    for (const candidate of PUNCTUATORS) {
      if (src.startsWith(candidate, i)) { p = candidate; break; }
    }
    i += p.length;
    push('punct', start, i);
  }
  return toks;
}

// ---------------------------------------------------------------------------------------------
// Top-level statements of a cell.

// Words after which an expression is not finished (so a line break does not end a statement).
const NOT_ENDING = new Set([...OPERATOR_WORDS]);
const STATEMENT_WORDS = new Set(['function', 'class', 'if', 'for', 'while', 'do', 'try',
  'switch', 'return', 'throw', 'break', 'continue', 'var', 'let', 'const', 'import', 'export',
  'else', 'catch', 'finally', 'case', 'default', 'with', 'debugger']);

function endsExpression(t) {
  if (t.type === 'name') return !NOT_ENDING.has(t.value);
  if (t.type === 'punct') return [')', ']', '}', '++', '--'].includes(t.value);
  return true;   // a number, string, template or regular expression
}

// Whether a token on a new line carries on the expression before it (no automatic semicolon).
function continuesExpression(t) {
  if (t.type === 'tmpl') return true;
  if (t.type === 'name') return t.value === 'in' || t.value === 'instanceof';
  if (t.type !== 'punct') return false;
  return !['{', '}', ')', ']', ';', '!', '~', '++', '--'].includes(t.value);
}

function isStatementStart(toks, k) {
  if (toks[k].depth !== 0) return false;
  if (k === 0) return true;
  const p = toks[k - 1];
  if (p.type === 'punct' && (p.value === ';' || p.value === '}')) return true;
  if (!toks[k].nl || !endsExpression(p)) return false;
  // `if (x)` / `while (x)` and the like followed by a statement on the next line.
  if (p.value === ')' && p.open !== undefined && p.open > 0) {
    const head = toks[p.open - 1];
    if (head.type === 'name' && ['if', 'for', 'while', 'with'].includes(head.value)) return false;
  }
  return true;
}

// The index of the last token of the top-level expression or declarator list starting at j:
// it stops before a top-level `;` or `,` (when stopAtComma), or at a line break the grammar
// ends the statement at.
function expressionEnd(toks, j, stopAtComma) {
  let last = j - 1;
  for (let k = j; k < toks.length; k++) {
    const t = toks[k];
    if (t.depth === 0) {
      if (t.type === 'punct' && (t.value === ';' || (t.value === '}' && t.open === undefined))) {
        break;
      }
      if (stopAtComma && t.type === 'punct' && t.value === ',') break;
      if (k > j && t.nl && endsExpression(toks[k - 1]) && !continuesExpression(t)) break;
    }
    last = k;
  }
  return last;
}

// A binding pattern at toks[j]; its names are added to `names`. Returns the index after it.
function bindingPattern(toks, j, names) {
  const t = toks[j];
  if (!t) throw new Error('pattern');
  if (t.type === 'name') {
    names.push(t.value);
    return j + 1;
  }
  if (t.type !== 'punct' || (t.value !== '[' && t.value !== '{') || t.close === undefined) {
    throw new Error('pattern');
  }
  const close = t.close;
  const inner = t.depth + 1;
  let k = j + 1;
  const skipDefault = () => {
    if (toks[k] && toks[k].value === '=' && toks[k].depth === inner) {
      k++;
      while (k < close && !(toks[k].depth === inner && toks[k].value === ',')) k++;
    }
  };
  while (k < close) {
    const u = toks[k];
    if (u.value === ',') { k++; continue; }
    if (u.value === '...') {
      k = bindingPattern(toks, k + 1, names);
    } else if (t.value === '[') {
      k = bindingPattern(toks, k, names);
      skipDefault();
    } else {
      // An object pattern's property: `key`, `key: pattern`, `[computed]: pattern`.
      let key = null;
      if (u.value === '[' && u.close !== undefined) {
        k = u.close + 1;
      } else {
        key = u;
        k++;
      }
      if (toks[k] && toks[k].value === ':' && toks[k].depth === inner) {
        k = bindingPattern(toks, k + 1, names);
      } else {
        if (!key || key.type !== 'name') throw new Error('pattern');
        names.push(key.value);
      }
      skipDefault();
    }
    if (k < close && toks[k].value !== ',') throw new Error('pattern');
  }
  return close + 1;
}

// `var`/`let`/`const` at toks[k]: its names, its declarators and its last token.
function declaration(toks, k) {
  const names = [];
  const declarators = [];
  let j = k + 1;
  for (;;) {
    const before = names.length;
    const after = bindingPattern(toks, j, names);
    let end = after - 1;
    let init = false;
    if (toks[after] && toks[after].value === '=' && toks[after].depth === 0) {
      end = expressionEnd(toks, after + 1, true);
      init = true;
    }
    declarators.push({ first: j, last: end, init, names: names.slice(before) });
    const next = toks[end + 1];
    if (next && next.depth === 0 && next.value === ',') {
      j = end + 2;
      continue;
    }
    return { names, declarators, last: end };
  }
}

// `class X ... { }` at toks[k]: its name and the index of its closing brace.
function classDeclaration(toks, k) {
  const name = toks[k + 1];
  if (!name || name.type !== 'name' || name.value === 'extends') return null;
  for (let j = k + 2; j < toks.length; j++) {
    const t = toks[j];
    if (t.depth === 0 && t.value === '{' && t.close !== undefined) {
      return { name: name.value, last: t.close };
    }
  }
  return null;
}

function functionName(toks, k) {
  let j = k + 1;
  if (toks[j] && toks[j].value === '*') j++;
  return toks[j] && toks[j].type === 'name' ? toks[j].value : null;
}

// `import ... from 'x'` at toks[k]: the bindings (local name -> exported name or '*') and the
// module specifier.
function importDeclaration(toks, k) {
  const bindings = [];
  let j = k + 1;
  const t = toks[j];
  if (t && t.type === 'str') {
    return { bindings, spec: t, last: j };
  }
  if (t && t.type === 'name' && t.value !== 'from') {
    bindings.push([t.value, 'default']);
    j++;
    if (toks[j] && toks[j].value === ',') j++;
  } else if (t && t.type === 'name' && toks[j + 1] && toks[j + 1].value !== 'from') {
    bindings.push([t.value, 'default']);   // `import from from 'x'` is legal, if odd
    j++;
  }
  const u = toks[j];
  if (u && u.value === '*') {
    if (!toks[j + 1] || toks[j + 1].value !== 'as' || !toks[j + 2]) throw new Error('import');
    bindings.push([toks[j + 2].value, '*']);
    j += 3;
  } else if (u && u.value === '{' && u.close !== undefined) {
    let m = j + 1;
    while (m < u.close) {
      const imported = toks[m];
      if (imported.value === ',') { m++; continue; }
      let exported = imported.type === 'str' ? parseJSON(stringLiteral(imported.value))
        : imported.value;
      let local = imported.value;
      m++;
      if (toks[m] && toks[m].value === 'as') {
        local = toks[m + 1].value;
        m += 2;
      }
      bindings.push([local, exported]);
    }
    j = u.close + 1;
  }
  if (!toks[j] || toks[j].value !== 'from' || !toks[j + 1] || toks[j + 1].type !== 'str') {
    throw new Error('import');
  }
  return { bindings, spec: toks[j + 1], last: j + 1 };
}

// A JavaScript string literal as a JSON string literal.
function stringLiteral(text) {
  return stringify(String(vm.runInNewContext(text)));
}

// Finds the cell's top-level declarations. Throws when the code is beyond the tokenizer (the
// caller then runs the cell unchanged).
function analyse(code) {
  const toks = tokenize(code);
  const found = [];   // {kind, k, last, ...}
  const hasAwait = toks.some((t) => t.type === 'name' && t.value === 'await');
  for (let k = 0; k < toks.length; k++) {
    const t = toks[k];
    if (t.type !== 'name' || !isStatementStart(toks, k)) continue;
    const next = toks[k + 1];
    if (t.value === 'var' || t.value === 'let' || t.value === 'const') {
      if (!next || !(next.type === 'name' || next.value === '[' || next.value === '{')) continue;
      if (t.value === 'let' && next.type === 'name' && STATEMENT_WORDS.has(next.value) &&
          next.value !== 'let') continue;
      const d = declaration(toks, k);
      found.push({ kind: t.value, k, ...d });
      k = d.last;
    } else if (t.value === 'class') {
      const c = classDeclaration(toks, k);
      if (c) {
        found.push({ kind: 'class', k, ...c });
        k = c.last;
      }
    } else if (t.value === 'function' ||
               (t.value === 'async' && next && next.value === 'function' && !next.nl)) {
      const f = t.value === 'async' ? k + 1 : k;
      const name = functionName(toks, f);
      if (name) found.push({ kind: 'function', k, name });
    } else if (t.value === 'import' && next && next.value !== '(' && next.value !== '.') {
      const d = importDeclaration(toks, k);
      found.push({ kind: 'import', k, ...d });
      k = d.last;
    }
  }
  // import() is given to our loader (which resolves from the current directory): scripts of
  // the vm module have no loader of their own without an experimental flag.
  const importCalls = [];
  toks.forEach((t, k) => {
    if (t.type === 'name' && t.value === 'import' && toks[k + 1] && toks[k + 1].value === '(' &&
        !(k > 0 && (toks[k - 1].value === '.' || toks[k - 1].value === '?.'))) {
      importCalls.push([t.start, t.end, 'globalThis.__hutch.import']);
    }
  });
  return { toks, found, hasAwait, importCalls,
    hasImport: found.some((d) => d.kind === 'import') };
}

// Replacements [start, end, text] on the cell's text.
function applyEdits(code, edits, from, to) {
  let out = '';
  let pos = from;
  for (const [start, end, text] of edits) {
    if (start < from || end > to) continue;
    out += code.slice(pos, start) + text;
    pos = end;
  }
  return out + code.slice(pos, to);
}

// Top-level `let`/`const` -> `var`, `class X {}` -> `var X = class X {};`.
function scriptEdits(code, a) {
  const edits = [...a.importCalls];
  for (const d of a.found) {
    const t = a.toks[d.k];
    if (d.kind === 'let' || d.kind === 'const') {
      edits.push([t.start, t.end, 'var']);
    } else if (d.kind === 'class') {
      edits.push([t.start, t.start, `var ${d.name} = `]);
      const close = a.toks[d.last];
      edits.push([close.end, close.end, ';']);
    }
  }
  return edits.sort((x, y) => x[0] - y[0]);
}

// The cell as the body of an async function whose top-level declarations assign globals.
// Returns {hoisted, prologue, edits, ranges}: names to declare outside the function, code run
// first inside it, edits, and the token ranges the edits cover.
function asyncEdits(code, a) {
  const toks = a.toks;
  const hoisted = [];
  const prologue = [];
  const edits = [];
  const ranges = [];
  for (const d of a.found) {
    const first = toks[d.k];
    if (d.kind === 'var' || d.kind === 'let' || d.kind === 'const') {
      hoisted.push(...d.names);
      const parts = d.declarators.map((x) => {
        const text = applyEdits(code, a.importCalls, toks[x.first].start, toks[x.last].end);
        if (x.init) return text;
        return d.kind === 'var' ? text : `${text} = undefined`;
      });
      edits.push([first.start, toks[d.last].end, `void (${parts.join(', ')})`]);
      ranges.push([d.k, d.last]);
    } else if (d.kind === 'class') {
      hoisted.push(d.name);
      edits.push([first.start, first.start, `;${d.name} = `]);
      const close = toks[d.last];
      edits.push([close.end, close.end, ';']);
      ranges.push([d.k, d.last]);
    } else if (d.kind === 'function') {
      prologue.push(`globalThis[${stringify(d.name)}] = ${d.name};`);
    } else if (d.kind === 'import') {
      const spec = stringLiteral(d.spec.value);
      const assign = d.bindings.map(([local, name]) => {
        hoisted.push(local);
        return name === '*' ? `${local} = __hutch_ns;` : `${local} = __hutch_ns[${stringify(name)}];`;
      });
      edits.push([first.start, toks[d.last].end,
        `void ((__hutch_ns) => { ${assign.join(' ')} })(await globalThis.__hutch.import(${spec}))`]);
      ranges.push([d.k, d.last]);
    }
  }
  const replaced = edits.filter(([start, end]) => end > start);
  for (const call of a.importCalls) {
    if (!replaced.some(([start, end]) => call[0] >= start && call[1] <= end)) edits.push(call);
  }
  edits.sort((x, y) => x[0] - y[0]);
  return { hoisted, prologue, edits, ranges };
}

function scriptOptions(filename) {
  return { filename };
}

function wrapAsync(hoisted, prologue, body) {
  const vars = hoisted.length ? `var ${[...new Set(hoisted)].join(', ')}; ` : '';
  return `${vars}(async () => {${prologue.join(' ')}${body}\n})()`;
}

// The wrapped cell, returning its last expression statement (if any) from the function. The
// statement's start is found by trying: it is the earliest top-level statement start after the
// last top-level `;` such that `return (<rest of the cell>)` compiles.
function asyncScript(code, a, filename) {
  const toks = a.toks;
  const { hoisted, prologue, edits, ranges } = asyncEdits(code, a);
  let last = toks.length - 1;
  while (last >= 0 && toks[last].depth === 0 && toks[last].value === ';') last--;
  if (last >= 0) {
    let from = 0;
    for (let k = last; k >= 0; k--) {
      if (toks[k].depth === 0 && toks[k].value === ';') { from = k + 1; break; }
    }
    const covered = (k) => ranges.some(([s, e]) => k > s && k <= e);
    for (let k = from; k <= last; k++) {
      const t = toks[k];
      if (!isStatementStart(toks, k) || covered(k)) continue;
      if (t.value === '{' || (t.type === 'name' && (STATEMENT_WORDS.has(t.value) ||
          (t.value === 'async' && toks[k + 1] && toks[k + 1].value === 'function'))) ||
          (t.type === 'name' && toks[k + 1] && toks[k + 1].value === ':')) continue;
      const body = applyEdits(code, edits, 0, t.start) + 'return (' +
        applyEdits(code, edits, t.start, toks[last].end) + '\n);';
      const source = wrapAsync(hoisted, prologue, body);
      try {
        return new vm.Script(source, scriptOptions(filename));
      } catch (e) {
        // not an expression from here: try the next statement start
      }
    }
  }
  return new vm.Script(wrapAsync(hoisted, prologue, applyEdits(code, edits, 0, code.length)),
    scriptOptions(filename));
}

// Compiles a cell: {script, isAsync}. Throws the SyntaxError to report when it cannot.
function compile(code, filename) {
  let a = null;
  try {
    a = analyse(code);
  } catch (e) {
    a = null;   // beyond our tokenizer: the cell runs as written
  }
  let syncError = null;
  if (!a || !a.hasImport) {
    if (a) {
      try {
        return { script: new vm.Script(applyEdits(code, scriptEdits(code, a), 0, code.length),
          scriptOptions(filename)), isAsync: false };
      } catch (e) {
        // fall through: try the cell as written (for its error, or in case the rewrite erred)
      }
    }
    try {
      return { script: new vm.Script(code, scriptOptions(filename)), isAsync: false };
    } catch (e) {
      syncError = e;
    }
    if (!a || !a.hasAwait) throw syncError;
  }
  try {
    return { script: asyncScript(code, a, filename), isAsync: true };
  } catch (e) {
    if (syncError && !/await/.test(String(syncError.message))) throw syncError;
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// What user code finds in its global scope.

const requireCache = new Map();

function requireFrom(dir) {
  let r = requireCache.get(dir);
  if (!r) {
    r = Module.createRequire(path.join(dir, '<repl>'));
    requireCache.set(dir, r);
  }
  return r;
}

// Where `npm install -g` puts packages: Node's own prefix and the usual prefixes.
function globalRoots() {
  const roots = [path.resolve(path.dirname(proc.execPath), '..', 'lib', 'node_modules'),
    '/usr/local/lib/node_modules', '/usr/lib/node_modules', '/usr/share/nodejs'];
  const prefix = proc.env.npm_config_prefix || proc.env.NPM_CONFIG_PREFIX;
  if (prefix) roots.unshift(path.join(prefix, 'lib', 'node_modules'));
  return [...new Set(roots)];
}

function isBare(id) {
  return !(id.startsWith('.') || id.startsWith('/') || id.startsWith('node:'));
}

// require() relative to the current directory (it follows process.chdir), then to the global
// package directories.
function userRequire(id) {
  try {
    return requireFrom(proc.cwd())(id);
  } catch (e) {
    if (!e || e.code !== 'MODULE_NOT_FOUND' || typeof id !== 'string' || !isBare(id)) throw e;
    for (const root of globalRoots()) {
      let resolved;
      try {
        resolved = require.resolve(id, { paths: [root] });
      } catch (e2) {
        continue;
      }
      return requireFrom(proc.cwd())(resolved);
    }
    throw e;
  }
}
userRequire.resolve = (id, options) => {
  try {
    return requireFrom(proc.cwd()).resolve(id, options);
  } catch (e) {
    if (!e || e.code !== 'MODULE_NOT_FOUND' || typeof id !== 'string' || !isBare(id)) throw e;
    for (const root of globalRoots()) {
      try {
        return require.resolve(id, { paths: [root] });
      } catch (e2) {
        // next
      }
    }
    throw e;
  }
};
userRequire.cache = require.cache;

// import() and static imports: relative to the current directory too.
async function userImport(spec) {
  if (typeof spec === 'string' && !Module.isBuiltin?.(spec) && !spec.startsWith('node:') &&
      !/^[a-z]+:/i.test(spec)) {
    if (!isBare(spec)) {
      return import(pathToFileURL(path.resolve(proc.cwd(), spec)).href);
    }
    let resolved = null;
    try {
      resolved = userRequire.resolve(spec);
    } catch (e) {
      resolved = null;   // an ESM-only package, say: let import() report
    }
    if (resolved && path.isAbsolute(resolved)) return import(pathToFileURL(resolved).href);
  }
  return import(spec);
}

const MIME = /^[a-z]+\/[-+.\w]+$/i;

// A plain object whose keys are all MIME types is shown as that bundle.
function isMimeBundle(value) {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return false;
  const keys = Object.keys(value);
  if (!keys.length || !keys.every((k) => MIME.test(k))) return false;
  return keys.every((k) => k === 'application/json' || k.endsWith('+json') ||
    typeof value[k] === 'string');
}

function bundle(value) {
  if (value === undefined) return null;
  if (isMimeBundle(value)) return { ...value };
  return { 'text/plain': inspect(value) };
}

function send(msg) {
  channel.write(stringify(msg) + '\n');
}

let current = null;

// display(value) shows a value now (a MIME bundle as is, anything else as util.inspect text).
function display(value, metadata) {
  const data = bundle(value);
  if (data) send({ type: 'display', id: current ? current.id : null, data, metadata: metadata || {} });
}
display.html = (html) => display({ 'text/html': String(html) });
display.markdown = (md) => display({ 'text/markdown': String(md) });
display.svg = (svg) => display({ 'image/svg+xml': String(svg) });
display.png = (data) => display({ 'image/png': Buffer.isBuffer(data) ? data.toString('base64') : String(data) });
display.json = (value) => display({ 'application/json': value });

function define(name, value) {
  Object.defineProperty(globalThis, name, { value, writable: true, configurable: true,
    enumerable: false });
}
define('require', userRequire);
define('display', display);
define('__hutch', Object.freeze({ import: userImport }));

// ---------------------------------------------------------------------------------------------
// Running cells.

// A stack without this file's frames and without a source excerpt of this file (node adds one
// to errors thrown here, such as require()'s).
function cleanStack(stack) {
  let lines = String(stack).split('\n');
  if (lines.length > 4 && /:\d+$/.test(lines[0]) && lines[3] === '' &&
      !lines[0].startsWith('<cell ')) {
    lines = lines.slice(4);
  }
  let lastCell = -1;
  lines.forEach((line, i) => { if (/^\s+at .*<cell \d+>/.test(line)) lastCell = i; });
  if (lastCell >= 0) lines = lines.slice(0, lastCell + 1);
  return lines.filter((line) => !(/^\s+at /.test(line) &&
    (line.includes(__filename) || /\(node:vm[:)]|at node:vm|at new Script /.test(line))));
}

function describeError(err) {
  if (err instanceof Interrupted || (err && err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED')) {
    return { ename: 'Interrupted', evalue: 'execution was interrupted', traceback: [] };
  }
  try {
    if (isNativeError(err) || err instanceof Error) {
      const ename = String(err.name || (err.constructor && err.constructor.name) || 'Error');
      const evalue = String(err.message === undefined ? '' : err.message);
      return { ename, evalue, traceback: cleanStack(err.stack || `${ename}: ${evalue}`) };
    }
    const text = inspect(err);
    return { ename: 'Uncaught', evalue: text, traceback: [`Uncaught ${text}`] };
  } catch (e) {
    return { ename: 'Error', evalue: 'an error that could not be described', traceback: [] };
  }
}

function isThenable(value) {
  try {
    return value !== null && (typeof value === 'object' || typeof value === 'function') &&
      typeof value.then === 'function';
  } catch (e) {
    return false;
  }
}

async function runCell(msg) {
  const cell = { id: msg.id, count: msg.count, settled: false, abort: null };
  const aborted = new Promise((resolve, reject) => { cell.abort = reject; });
  aborted.catch(() => {});
  current = cell;
  let reply;
  try {
    const { script } = compile(String(msg.code), `<cell ${msg.count}>`);
    let value = script.runInThisContext({ breakOnSigint: true, displayErrors: true });
    if (isThenable(value)) value = await Promise.race([value, aborted]);
    reply = { status: 'ok', data: msg.silent ? null : bundle(value) };
  } catch (err) {
    reply = { status: 'error', ...describeError(err) };
  } finally {
    cell.settled = true;
    current = null;
  }
  send({ type: 'reply', id: msg.id, ...reply });
}

let queue = Promise.resolve();

function onRequest(msg) {
  if (msg.type === 'execute') {
    queue = queue.then(() => runCell(msg)).catch((e) => stderrWrite(`[kernel] ${e}\n`));
  }
}

if (require.main !== module) {
  // Loaded as a module (by tests of the rewriting): expose it, start nothing.
  module.exports = { tokenize, analyse, compile, bundle, describeError };
  return;
}

// An interrupt (SIGINT, from the kernel's process group or from the kernel) ends the running
// cell. While synchronous code runs, breakOnSigint does that instead of this listener.
proc.on('SIGINT', () => {
  if (current && !current.settled) current.abort(new Interrupted('execution was interrupted'));
});

// Whether an error's stack shows it comes from an earlier cell's code (a timer it left).
function fromOtherCell(err, cell) {
  let stack = '';
  try {
    stack = String((err && err.stack) || '');
  } catch (e) {
    return false;
  }
  const cells = stack.match(/<cell \d+>/g);
  return Boolean(cells) && !cells.includes(`<cell ${cell.count}>`);
}

// An exception no cell can catch (a throwing timer callback, a rejection nobody handles) fails
// the running cell, whose promise might otherwise never settle; between cells it is printed.
function uncaught(err) {
  if (current && !current.settled && !fromOtherCell(err, current)) {
    current.abort(err);
    return;
  }
  const { traceback, ename, evalue } = describeError(err);
  stderrWrite(`Uncaught ${traceback.length ? traceback.join('\n') : `${ename}: ${evalue}`}\n`);
}
proc.on('uncaughtException', uncaught);
proc.on('unhandledRejection', uncaught);

const channel = net.createConnection(proc.argv[2]);
channel.setEncoding('utf8');
let pending = '';
channel.on('connect', () => {
  send({ type: 'ready', pid: proc.pid, version: proc.versions.node });
});
channel.on('data', (chunk) => {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, nl);
    pending = pending.slice(nl + 1);
    if (line.trim()) onRequest(parseJSON(line));
  }
});
// The kernel is gone (or never came): nothing is left to serve.
channel.on('close', () => proc.exit(0));
channel.on('error', () => proc.exit(1));
