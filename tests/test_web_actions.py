"""The web action parser (vlmq_core.envs.web_actions) against hostile replies: whatever a model writes, the string
that would reach BrowserGym is None or one allow-listed call with literal arguments, rebuilt by us. No browser."""

from __future__ import annotations

import ast
import random
import re

import pytest

from vlmq_core.envs.web_actions import ACTIONS, MAX_CALL_CHARS, parse_web_action, quote

ACCEPTED = {
    "[action] click('13')": 'click("13")',
    '[action]click("a51")': 'click("a51")',
    "I see the button. [action] click(13)": 'click("13")',
    "[action] click(bid='7', button='right', modifiers=['Shift', 'Alt'])": (
        'click("7", button="right", modifiers=["Shift", "Alt"])'
    ),
    "[action] dblclick('ca42', button=\"middle\")": 'dblclick("ca42", button="middle")',
    "[action] fill('45', \"multi-line\\nexample\")": 'fill("45", "multi-line\\nexample")',
    "[action] fill('a12', 'with \"quotes\" and \\\\ back')": 'fill("a12", "with \\"quotes\\" and \\\\ back")',
    "[action] fill('3', 'Grüße, 東京')": 'fill("3", "Grüße, 東京")',
    "[action] select_option('a48', ('red', 'blue'))": 'select_option("a48", ["red", "blue"])',
    "[action] select_option('a48', 'blue')": 'select_option("a48", "blue")',
    "[action] press('88', 'Control+a')": 'press("88", "Control+a")',
    "[action] scroll(-50.2, +100)": "scroll(-50.2, 100)",
    "[action] noop()": "noop()",
    "[action] noop(wait_ms=500)": "noop(wait_ms=500)",
    "[action] click('55')   # the first box": 'click("55")',
    "[action]\n  hover('b8')\n": 'hover("b8")',
}


@pytest.mark.parametrize("reply", list(ACCEPTED))
def test_valid_replies_become_canonical_calls(reply):
    call = parse_web_action(reply)
    assert call == ACCEPTED[reply]
    assert parse_web_action("[action] " + call) == call  # canonical calls are fixed points


def test_argument_values_survive_the_rebuild():
    """Python and BrowserGym's own string grammar (pyparsing's escaped, double-quoted strings) read back exactly
    the value the reply gave."""
    pp = pytest.importorskip("pyparsing")
    string = pp.QuotedString(quote_char='"', esc_char="\\", multiline=True, unquote_results=True)
    for value in ['he said "hi"', "back\\slash", "two\nlines\tand tab", "Grüße 東京 🙂", "'single'", "\\n literal"]:
        call = parse_web_action(f"[action] fill('1', {value!r})")
        assert call is not None, value
        literal = call[len('fill("1", ') : -1]
        assert ast.literal_eval(literal) == value and literal == quote(value)
        assert string.parse_string(literal, parse_all=True)[0] == value, value


PAYLOADS = [
    "__import__('os').system('rm -rf /')",
    "exec('import os')",
    "eval('1+1')",
    "open('/etc/passwd').read()",
    "os.system('ls')",
    "page.goto('http://evil')",
    "page.evaluate('fetch(1)')",
    "click.__globals__",
    "click('1').__class__",
    "click('1')('2')",
    "click(click('1'))",
    "click(str(1))",
    "click('1' + '2')",
    "click('1' * 10**9)",
    "click(f'{1}')",
    "click(f'{__import__(\"os\")}')",
    "click(lambda: 1)",
    "click([x for x in '1'])",
    "click({'a': 1})",
    "click({'1'})",
    "click(b'1')",
    "click(1j)",
    "click(None)",
    "click(True)",
    "click(...)",
    "click(x)",
    "click(*['1'])",
    "click(**{'bid': '1'})",
    "click('1', '2', '3', '4')",
    "click('1', foo='bar')",
    "click('1', bid='2')",
    "click('1', button='left; import os')",
    "click('1', modifiers=['Shift', 'Shift'])",
    "click('1', modifiers=['Hyper'])",
    "click('1', modifiers='Shift')",
    "click('../../etc')",
    "click('1 or 1')",
    "click('')",
    "click('1'*2)",
    "click('1'); import os",
    "click('1')\nimport os",
    "click('1') and exec('x')",
    "click('1') if True else 0",
    "(click)('1')",
    "[click('1')]",
    "click['1']",
    "python('import os')",
    "send_msg_to_user('hi')",
    "goto('http://x')",
    "tab_close()",
    "report_infeasible('x')",
    "mouse_click(1, 2)",
    "keyboard_type('rm -rf')",
    "upload_file('1', '/etc/passwd')",
    "scroll(1e309, 0)",
    "scroll(float('nan'), 0)",
    "scroll(10**100, 0)",
    "scroll(--1, 0)",
    "noop(-1e10)",
    "fill('1', 'a' * 300)",
    "fill('1', '" + "a" * 300 + "')",
    "fill('1', 'bell\\x07')",
    "fill('1', 'nul\\x00')",
    "fill('1', 'esc\\x1b[31m')",
    "fill('1', 'surrogate \\ud800')",
    "press('1', 'Control+\"')",
    "press('1', 'a\\\\b')",
    "select_option('1', [])",
    "select_option('1', [1, 2])",
    "select_option('1', [['a']])",
    "ｃｌｉｃｋ('1')",  # fullwidth: Python's NFKC would read "click"
    "сlick('1')",  # Cyrillic с
    "cl\u200bick('1')",  # zero-width space
    "click\u00a0('1')",
    "click ('1')",
    "CLICK('1')",
    "click('1'",
    "click('1'))",
    "click('1' # hidden\n, '2')",
    "click('1')  # " + "x" * 20,
    "\\\nclick('1')",
    "click('1')#\nimport os",
    "'''click('1')'''",
    "\"click('1')\"",
    "# click('1')",
    "click('1') ; ",
    "async def f(): pass",
    "yield click('1')",
    "await click('1')",
    "click(('1'))[0]",
    "click(id:='1')",
    "(" * 300 + "1" + ")" * 300,
    "[" * 120 + "]" * 120,
    "click(" + "[" * 100 + "'1'" + "]" * 100 + ")",
    "\x00click('1')",
    "click('1')\x00",
    "click('1'\r)",
    "\ufeffclick('1')",
]

WRAPPERS = [
    "[action] {}",
    "[action]{}",
    "[action] {}\n",
    "Thought: sure.\n[action] {}",
    "[action] {} [action] click('1')",
    "[action] click('1') {}",
    "[action] {} # ok",
    "[action]\n\n{}",
    "[action] `{}`",
    "[action] ```python\n{}\n```",
    "{}",
    "[Action] {}",
    "[action] {}" + " " * 5000,
    "[action] {};",
    "[action] ({})",
    "[action] {} \\",
]


def _hostile() -> list[str]:
    replies = [w.format(p) if "{}" in w else w + p for w in WRAPPERS for p in PAYLOADS]
    rng = random.Random(0)  # random token soup around real calls
    pieces = [
        "click",
        "(",
        ")",
        "'1'",
        '"a5"',
        ",",
        "__import__",
        ".",
        "os",
        "[",
        "]",
        "lambda",
        ":",
        "*",
        "**",
        "=",
        "button",
        "'left'",
        "#",
        "\n",
        ";",
        "f'{",
        "}'",
        " ",
        "exec",
        "fill",
        "'x'",
        "\\",
        "\u0441",
        "-",
    ]
    replies += ["[action] " + "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14))) for _ in range(600)]
    replies += ["x" * 10_000_000, "[action] " + "click('1')" * 5000, "[action] click('" + "1" * 100_000 + "')"]
    return replies


def _independently_safe(call: str) -> bool:
    """Checked without the parser's code: one call of an allow-listed name, every argument a literal (a number,
    possibly signed, a string, or a list of strings), on one line, and the parser's own fixed point."""
    node = ast.parse(call, mode="eval").body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ACTIONS):
        return False

    def literal(n: ast.AST) -> bool:
        if isinstance(n, ast.Constant):
            return type(n.value) in (str, int, float)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return isinstance(n.operand, ast.Constant) and type(n.operand.value) in (int, float)
        return isinstance(n, ast.List) and all(isinstance(e, ast.Constant) and type(e.value) is str for e in n.elts)

    args = [*node.args, *(k.value for k in node.keywords)]
    return (
        all(literal(a) for a in args)
        and all(k.arg in {p.name for p in ACTIONS[node.func.id]} for k in node.keywords)
        and "\n" not in call
        and len(call) <= 2 * MAX_CALL_CHARS
        and call.startswith(node.func.id + "(")
        and parse_web_action("[action] " + call) == call
    )


def test_a_thousand_hostile_replies_are_rejected_or_rebuilt_safely():
    replies = _hostile()
    assert len(replies) >= 1000
    rebuilt = {}
    for reply in replies:
        call = parse_web_action(reply)
        if call is not None:
            assert _independently_safe(call), (reply, call)
            rebuilt[reply[:80]] = call
    # a payload that reaches for anything but a plain call never gets through, whatever wraps it
    dangerous = re.compile(
        r"import|exec|eval|open|os\.|page|__|lambda|goto|python|system|msg|upload|keyboard|mouse|tab_"
    )
    for payload in filter(dangerous.search, PAYLOADS):
        for wrapper in WRAPPERS:
            reply = wrapper.format(payload) if "{}" in wrapper else wrapper + payload
            call = parse_web_action(reply)
            assert call is None or call == 'click("1")' and "click('1')" in reply.replace(payload, ""), (reply, call)
    # and what does get through is only the plain calls hidden in the wrappers
    assert set(rebuilt.values()) <= {'click("1")', 'click("1", button="left")'} | set(ACCEPTED.values())
    assert parse_web_action(None) is None and parse_web_action(b"[action] click('1')") is None  # type: ignore[arg-type]


def test_the_allow_list_is_what_the_click_tasks_need_and_nothing_that_navigates_or_runs_code():
    assert set(ACTIONS) == {
        "click", "dblclick", "hover", "focus", "clear", "fill", "select_option", "press",
        "scroll", "noop",
    }  # fmt: skip
    banned_names = ("check", "uncheck", "python", "goto", "go_back", "new_tab", "tab_close", "send_msg_to_user")
    for banned in (*banned_names, "upload_file"):
        assert parse_web_action(f"[action] {banned}('1')") is None


HUGE = ["1" + "0" * 400, "-" + "9" * 400, "1e999", "-1e999", "0x" + "f" * 300]
NON_PRINTING = ["\x80", "\x9b", "\x9f", "\u202e", "\u2066", "\u200b", "\u200d", "\ufeff", "\u00ad"]


def _slot_value(kind: str) -> str:
    return {"bid": "'7'", "text": "'ok'", "key": "'Enter'", "button": "'left'", "modifiers": "['Shift']",
            "options": "'red'", "number": "5"}[kind]  # fmt: skip


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_every_argument_slot_refuses_huge_numbers_and_non_printing_characters_without_raising(name):
    """Issue 30, defects 1-2: a number beyond a float's range raised OverflowError (math.isfinite) and C1 controls
    (U+009B is the one-byte terminal escape), bidi and zero-width characters passed into texts. Each slot, written
    positionally and by name, gets each bad value; the call is refused, never raised, never passed through."""
    params = ACTIONS[name]
    for i in range(len(params)):
        bad_values = [*HUGE, *(f"'a{c}b'" for c in NON_PRINTING), *(f"['a{c}b']" for c in NON_PRINTING)]
        for bad in bad_values:
            values = [_slot_value(q.kind) for q in params]
            values[i] = bad
            positional = f"[action] {name}({', '.join(values)})"
            named = f"[action] {name}({', '.join(f'{q.name}={v}' for q, v in zip(params, values, strict=True))})"
            for reply in (positional, named):
                assert parse_web_action(reply) is None, reply  # refused, not raised, not passed through
        good = f"[action] {name}({', '.join(_slot_value(q.kind) for q in params)})"
        assert parse_web_action(good) is not None, good


def test_text_keeps_printable_unicode_newline_and_tab():
    reply = "[action] fill('3', 'Grüße\\tand\\nmore: 東京 ✓')"
    assert parse_web_action(reply) == 'fill("3", "Grüße\\tand\\nmore: 東京 ✓")'
