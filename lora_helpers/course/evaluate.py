"""Checks for the demo adapters' behaviours, and the held-out table: adapter vs base.

- json: the reply is exactly one JSON object/array (a ```json fence is fine), holding the asked-for values.
- coding: one ```python block and nothing else; functions with type hints and a one-line docstring; at
  least one ``assert`` that exercises the code; the snippet runs clean in a subprocess (timeout 5 s).
- support: a greeting or an apology, then numbered steps ``1. ... 2. ...``; no code, no JSON.

``python -m lora_helpers.course.evaluate [--adapters DIR]`` prints the markdown table.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass

from ..errors import AdapterError
from ..tables import EMPTY, markdown
from ..shipped import BEHAVIOURS, demo_sources, load_examples
from .sandbox import SNIPPET, run_python

# Replies are short by design; these limits only stop a rambling base model early.
MAX_NEW_TOKENS = {"json": 96, "coding": 160, "support": 160}
RUN_TIMEOUT_S = 5.0


@dataclass
class Verdict:
    """A check's outcome: truthy when it passed; ``str()`` is one English line ("passed" / "failed: ...")."""
    ok: bool
    reason: str = ""
    form: bool | None = None  # the shape is right even if the content is not (JSON values, failing asserts)
    line: str = ""            # a snippet that failed: "line N: <that line>", where the error was raised

    def __post_init__(self):
        if self.form is None:
            self.form = self.ok

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return "passed"
        return f"failed: {self.reason}" + (f" ({self.line})" if self.line else "")


def _fail(reason: str, form: bool = False) -> Verdict:
    return Verdict(False, reason, form)


# ----------------------------------------------------------------------------- json
_JSON_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*?)\n?```$", re.S)


def _words(value) -> list[str]:
    return [w.strip(".-") for w in re.findall(r"[\w@.+-]+", str(value).casefold())]


def _same(got, want) -> bool:
    """``got`` holds ``want``: same keys/items; numbers equal; a string holds the expected words in order."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _same(got[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        try:
            return float(str(got).strip().lstrip("$")) == float(want)
        except ValueError:
            return False
    g, w = _words(got), _words(want)  # "Hotel Aurora" holds "Aurora"; "run" does not hold "charity run"
    return bool(w) and any(g[i:i + len(w)] == w for i in range(len(g) - len(w) + 1))


def check_json(reply: str, expect=None) -> Verdict:
    """One JSON object or array and nothing else; with ``expect``, it holds those keys and values."""
    text = reply.strip()
    if text.startswith("```"):
        m = _JSON_FENCE.match(text)
        if not m:
            return _fail("text outside the ```json fence")
        text = m.group(1).strip()
    try:
        value = json.loads(text)
    except ValueError as e:
        return _fail(f"not a single JSON value: {e}")
    if not isinstance(value, (dict, list)):
        return _fail(f"JSON {type(value).__name__}, expected an object or an array")
    if expect is not None and not _same(value, expect):
        return _fail(f"values differ from {json.dumps(expect, ensure_ascii=False)}", form=True)
    return Verdict(True)


# ----------------------------------------------------------------------------- coding
_PY_FENCE = re.compile(r"^```python[ \t]*\n(.*?)\n?```$", re.S)


def _style_problem(tree: ast.Module) -> str | None:
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not funcs:
        return "no function"
    for f in funcs:
        args = f.args.posonlyargs + f.args.args + f.args.kwonlyargs
        args += [a for a in (f.args.vararg, f.args.kwarg) if a]
        missing = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
        if missing or f.returns is None:
            return f"{f.name}: missing type hints ({', '.join(missing) or 'return'})"
        doc = ast.get_docstring(f)
        if not doc or "\n" in doc.strip():
            return f"{f.name}: needs a one-line docstring"
    asserts = [n for n in tree.body if isinstance(n, ast.Assert)]
    if not any(isinstance(n, ast.Call) for a in asserts for n in ast.walk(a)):
        return "no top-level assert that calls the code"
    return None


def run_snippet(code: str, timeout: float = RUN_TIMEOUT_S) -> Verdict:
    """Run ``code`` in the sandbox of :mod:`lora_helpers.course.sandbox`; ok when it exits 0.

    Otherwise ``reason`` is ``"timed out after 5 s"`` or ``"exit code 1: <last stderr line>"`` (e.g.
    ``AssertionError: message``, ``SyntaxError: ...``) and ``line`` the snippet's line that raised.

    The snippet is model-written, so it runs in a fresh isolated interpreter (``python -I``) with a scrubbed
    environment (no ``HF_TOKEN`` or other secret), without capabilities, in a temporary folder deleted
    afterwards, in its own session whose whole process group is killed when the run ends, under limits on
    memory, CPU time, processes and file size. Where this machine allows it, also: no network, a read-only
    view of every file outside its folder (no writes, chmod, utime or xattrs) and a folder of limited size
    and file count (``unshare`` namespaces); no writes outside its folder (Landlock); no UNIX socket files
    (seccomp). Where it does not, those are NOT blocked — ``str(sandbox.capabilities())`` says which hold
    here. Reading files is never blocked. Not a boundary against a determined attacker.
    """
    _check_text(code, "code")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise AdapterError(f"timeout={timeout!r} is not a number of seconds: expected a positive number, e.g. "
                           f"{RUN_TIMEOUT_S:g} (the default).")
    r = run_python(code, timeout)
    if r.timed_out:
        return _fail(f"timed out after {timeout:g} s")
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return Verdict(False, f"exit code {r.returncode}: {last}", False, _raising_line(code, r.stderr))
    return Verdict(True)


def _check_text(value, what: str) -> None:
    """``value`` is a str that can be written as UTF-8 (no lone surrogate, which is no character)."""
    if not isinstance(value, str):
        raise AdapterError(f"{what} must be a str, got {type(value).__name__}: pass the text itself (bytes: "
                           "decode them first), e.g. run_snippet('assert 1 + 1 == 2').")
    bad = next((i for i, ch in enumerate(value) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:
        line = value.count("\n", 0, bad) + 1
        column = bad - value.rfind("\n", 0, bad)
        raise AdapterError(f"{what} holds a lone surrogate U+{ord(value[bad]):04X} at line {line}, column {column}: "
                           "that is no character, so no file can hold it. Decode the text with "
                           "errors='replace' (or remove it) and run it again.")


def _raising_line(code: str, stderr: str) -> str:
    """"line N: <source>" of the snippet's last traceback frame (or syntax error), "" when there is none."""
    found = re.findall(rf'File "{re.escape(SNIPPET)}", line (\d+)', stderr)
    lines = code.splitlines()
    if not found or not 0 < int(found[-1]) <= len(lines):
        return ""
    return f"line {found[-1]}: {lines[int(found[-1]) - 1].strip()}"


_PY_BLOCK = re.compile(r"```python[ \t]*\n(.*?)(```|$)", re.S)


def run_reply(reply: str, timeout: float = RUN_TIMEOUT_S) -> Verdict:
    """Run the first ```python block of a model's reply with :func:`run_snippet` (other text is ignored).

    A reply without one, or whose block is not closed (cut off by ``max_new_tokens``), fails with that reason
    and ``form=False``; else it is the snippet's Verdict with ``form=True``. ``print(run_reply(reply))``
    shows one line, e.g. ``passed`` or ``failed: exit code 1: AssertionError (line 6: assert f(1) == 2)``.
    """
    _check_text(reply, "reply")
    m = _PY_BLOCK.search(reply)
    if not m:
        return _fail("no ```python block in the reply")
    if not m.group(2):
        return _fail("the ```python block is not closed (the reply was cut off?)")
    ran = run_snippet(m.group(1), timeout)
    return Verdict(ran.ok, ran.reason, True, ran.line)


def check_coding(reply: str, expect=None) -> Verdict:
    """One ```python block only, house style (type hints, one-line docstrings, asserts), asserts pass."""
    text = reply.strip()
    if text.count("```") != 2:
        return _fail("expected exactly one ``` block")
    m = _PY_FENCE.match(text)
    if not m:
        return _fail("not a single ```python block, or text outside it")
    code = m.group(1)
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return _fail(f"syntax error: {e.msg}")
    problem = _style_problem(tree)
    if problem:
        return _fail(problem)
    ran = run_snippet(code)
    return Verdict(ran.ok, ran.reason, True, ran.line)


# ----------------------------------------------------------------------------- support
_GREETING = re.compile(
    r"\b(hello|hi|hey|dear|greetings|good (morning|afternoon|evening|day)|thanks?|thank you|sorry|apolog\w*"
    r"|здравствуй\w*|привет\w*|добр\w+ (день|утро|вечер)|спасибо|благодар\w*|извин\w*|прост(ите|и)|сожале\w*"
    r"|жаль|сочувств\w*)\b", re.I)
_STEP = re.compile(r"^\s*(\d+)[.)]\s+\S", re.M)
_CODE = re.compile(r"^\s*(def|class|import|from\s+\S+\s+import)\s", re.M)


def check_support(reply: str, expect=None) -> Verdict:
    """A greeting or an apology before numbered steps 1., 2., ...; no code and no JSON."""
    text = reply.strip()
    if "```" in text or _CODE.search(text) or "{" in text:
        return _fail("contains code or JSON")
    steps = list(_STEP.finditer(text))
    numbers = [int(m.group(1)) for m in steps]
    if len(numbers) < 2 or numbers != list(range(1, len(numbers) + 1)):
        return _fail(f"expected numbered steps 1., 2., ...; found {numbers or 'none'}")
    if not _GREETING.search(text[:steps[0].start()]):
        return _fail("no greeting or apology before the steps")
    return Verdict(True)


CHECKS = {"json": check_json, "coding": check_coding, "support": check_support}


# ----------------------------------------------------------------------------- the table
def _replies(model, tokenizer, prompts, adapter, max_new_tokens):
    from ..generate import generate
    return generate(model, tokenizer, prompts, adapter=adapter, max_new_tokens=max_new_tokens)


def evaluate_adapters(model, tokenizer, adapters=BEHAVIOURS, include_base: bool = True,
                      max_new_tokens: dict | None = None) -> list[dict]:
    """Pass rates on the held-out prompts: each adapter on its own check, and the base on the same check.

    ``model`` is a PeftModel holding adapters named like the behaviours ("json", "coding", "support").
    Returns one row per adapter: ``adapter``, ``n``, ``adapter_pass``, ``base_pass`` (None without the
    base), ``adapter_form`` / ``base_form`` (the reply has the right shape — one JSON value, one house-style
    ```python block — whether or not its values are right or its asserts pass), ``differs`` (share of
    prompts where the greedy reply differs from the base's), and
    ``replies``: (prompt, adapter reply, verdict, base reply, verdict) for inspection.
    Render with :func:`to_markdown`.
    """
    limits = {**MAX_NEW_TOKENS, **(max_new_tokens or {})}
    rows = []
    for name in adapters:
        data = load_examples(name, "heldout")
        prompts = [d["prompt"] for d in data]
        check = CHECKS[name]
        mine = _replies(model, tokenizer, prompts, name, limits[name])
        base = _replies(model, tokenizer, prompts, "base", limits[name]) if include_base else [None] * len(data)
        details = []
        for d, a, b in zip(data, mine, base):
            details.append((d["prompt"], a, check(a, d.get("expect")), b, None if b is None else check(b, d.get("expect"))))
        n = len(data)
        rows.append(dict(
            adapter=name, n=n,
            adapter_pass=sum(bool(x[2]) for x in details) / n,
            base_pass=sum(bool(x[4]) for x in details) / n if include_base else None,
            adapter_form=sum(x[2].form for x in details) / n,
            base_form=sum(x[4].form for x in details) / n if include_base else None,
            differs=sum(x[1] != x[3] for x in details) / n if include_base else None,
            replies=details,
        ))
    return rows


COLUMNS = {"adapter": "adapter", "n": "held-out prompts", "adapter_pass": "adapter passes its check",
           "base_pass": "base passes the same check", "form": "right shape, content aside (adapter / base)",
           "differs": "reply differs from base"}


def to_markdown(rows: list[dict]) -> str:
    """The evaluation rows as a markdown table."""
    def f(x):
        return None if x is None else f"{x:.2f}"
    return markdown([dict(adapter=f"lora_{r['adapter']}", n=r["n"], adapter_pass=f(r["adapter_pass"]),
                          base_pass=f(r["base_pass"]), differs=f(r["differs"]),
                          form=f"{f(r.get('adapter_form')) or EMPTY} / {f(r.get('base_form')) or EMPTY}")
                     for r in rows], COLUMNS)


def main(argv=None) -> None:
    import argparse

    from .. import load_adapters, load_base, setup

    p = argparse.ArgumentParser(description="Held-out pass rates of the demo adapters vs the base.")
    p.add_argument("--adapters", default=None, help="folder with lora_json/, lora_coding/, lora_support/ "
                   "(default: the shipped ones)")
    p.add_argument("--only", nargs="+", choices=BEHAVIOURS, default=list(BEHAVIOURS))
    p.add_argument("-v", "--verbose", action="store_true", help="print every failing reply")
    args = p.parse_args(argv)
    setup()
    sources = demo_sources(args.adapters, args.only)
    model, tok = load_base("smollm2-135m")
    model = load_adapters(model, sources)
    rows = evaluate_adapters(model, tok, adapters=args.only)
    if args.verbose:
        for r in rows:
            for prompt, a, va, b, vb in r["replies"]:
                if not va or vb:
                    print(f"--- [{r['adapter']}] {prompt}\nadapter ({va.reason or 'ok'}):\n{a}\n"
                          f"base ({vb.reason or 'ok'}):\n{b}\n")
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
