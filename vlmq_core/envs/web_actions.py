"""Web actions for MiniWoB++ through BrowserGym: model output in, one canonical BrowserGym call out, or None.

BrowserGym turns an action string into Python that it executes (``browsergym/core/action/base.py``), so the
string it gets must never be model text. :func:`parse_web_action` stands in front of it: it reads the reply after
``[action]`` with Python's parser (``ast.parse``, which builds a tree and runs nothing), accepts exactly one call of
an allow-listed function (:data:`ACTIONS`) whose arguments are literals of the expected kinds, and *rebuilds* the
call from those values. Whatever the reply held (imports, attribute chains, nested calls, comments, a second
statement, look-alike letters), what reaches BrowserGym is a string this module wrote.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from dataclasses import dataclass

from vlmq_core.envs.text_action import ACTION_TAG

MAX_REPLY_CHARS = 4000
"""Longer replies are rejected before any parsing (a 135M model's 24-token reply is ~100 characters)."""
MAX_CALL_CHARS = 600
"""The call after the tag, at most (a ``fill`` with a 256-character value fits)."""
MAX_TEXT_CHARS = 256
"""A ``fill`` value or a ``select_option`` option, at most."""
BID = re.compile(r"[A-Za-z0-9]{1,16}")
"""BrowserGym element ids, as its accessibility tree writes them (``13``, ``a51``)."""
KEY = re.compile(r"[A-Za-z0-9+#\-_*/.,;:=!?@$%^&()\[\]{}<>|~` ]{1,32}")
"""A key or key combination for ``press`` (``Enter``, ``Control+a``, ``#``): printable ASCII, no quotes or backslash."""
BUTTONS = ("left", "middle", "right")
MODIFIERS = ("Alt", "Control", "Meta", "Shift")
MAX_NUMBER = 1e5
"""Scroll deltas and waits, in pixels or milliseconds, at most this in absolute value."""


@dataclass(frozen=True)
class Param:
    """One argument of an allow-listed function: its name, kind and whether it may be left out."""

    name: str
    kind: str
    """``bid``, ``text``, ``key``, ``button``, ``modifiers``, ``options`` or ``number``."""
    required: bool = True


_BID = Param("bid", "bid")
_POINTER = (_BID, Param("button", "button", False), Param("modifiers", "modifiers", False))
ACTIONS: dict[str, tuple[Param, ...]] = {
    "click": _POINTER,
    "dblclick": _POINTER,
    "hover": (_BID,),
    "focus": (_BID,),
    "clear": (_BID,),
    "fill": (_BID, Param("value", "text")),
    "select_option": (_BID, Param("options", "options")),
    "press": (_BID, Param("key_comb", "key")),
    "scroll": (Param("delta_x", "number"), Param("delta_y", "number")),
    "noop": (Param("wait_ms", "number", False),),
}
"""The BrowserGym functions a reply may call, with their parameters (BrowserGym's own signatures, restricted to
what MiniWoB++'s click tasks and form fields need; no navigation, tabs, chat, file upload or raw code). Each is in
BrowserGym 0.14's ``bid`` action subset, which the MiniWoB env runs them through (a test checks it)."""


class _Reject(Exception):
    """The reply is not one allow-listed call with literal arguments."""


def quote(text: str) -> str:
    """A double-quoted string literal that both Python and BrowserGym's parser read back as `text` (backslash,
    double quote, newline and tab escaped; `text` holds no other control character, :func:`_check` saw to it)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _literal(node: ast.AST) -> object:
    """The value of a literal node: str, int or float (a sign allowed), or a list/tuple of strings; else reject."""
    if isinstance(node, ast.Constant) and type(node.value) in (str, int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = node.operand
        if isinstance(inner, ast.Constant) and type(inner.value) in (int, float):
            return -inner.value if isinstance(node.op, ast.USub) else inner.value
    if isinstance(node, ast.List | ast.Tuple) and len(node.elts) <= 16:
        values = [_literal(e) for e in node.elts]
        if all(isinstance(v, str) for v in values):
            return values
    raise _Reject


def _text(value: object) -> str:
    """A text argument, refused if it holds a non-printing code point: a control character (C0, DEL and C1, whose
    U+009B is the one-byte terminal escape), a format character (bidi overrides and isolates, zero-width spaces and
    joiners, the BOM), a surrogate. Newline and tab are kept (``quote`` escapes them)."""
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise _Reject
    if any(c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in value):
        raise _Reject
    return value


def _check(kind: str, value: object) -> str:
    """`value` rendered as this kind's canonical literal, or reject."""
    if kind == "bid":
        if type(value) is int and value >= 0:  # click(13): the id as a number, read as the string it names
            value = str(value)
        if not isinstance(value, str) or not BID.fullmatch(value):
            raise _Reject
        return quote(value)
    if kind == "text":
        return quote(_text(value))
    if kind == "key":
        if not isinstance(value, str) or not KEY.fullmatch(value):
            raise _Reject
        return quote(value)
    if kind == "button":
        if value not in BUTTONS:
            raise _Reject
        return quote(str(value))
    if kind == "modifiers":
        if not isinstance(value, list) or len(set(value)) != len(value) or any(v not in MODIFIERS for v in value):
            raise _Reject
        return "[" + ", ".join(quote(v) for v in value) + "]"
    if kind == "options":
        if isinstance(value, list):
            if not value:
                raise _Reject
            return "[" + ", ".join(quote(_text(v)) for v in value) + "]"
        return quote(_text(value))
    if kind == "number":
        # refuses nan and inf too, and compares an int of any size exactly (math.isfinite raised OverflowError)
        if type(value) not in (int, float) or not abs(value) <= MAX_NUMBER:
            raise _Reject
        return repr(value)
    raise AssertionError(kind)


def _call(text: str) -> str:
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        raise _Reject from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise _Reject
    name = call.func.id
    # the name as written: Python folds look-alike letters (NFKC: fullwidth "ｃｌｉｃｋ" is "click"), we do not
    if name not in ACTIONS or not text.startswith(name + "("):
        raise _Reject
    params = ACTIONS[name]
    if len(call.args) > len(params) or any(isinstance(a, ast.Starred) for a in call.args):
        raise _Reject
    given: dict[str, object] = {p.name: _literal(a) for p, a in zip(params, call.args, strict=False)}
    by_name = {p.name: p for p in params}
    for kw in call.keywords:
        if kw.arg is None or kw.arg not in by_name or kw.arg in given:
            raise _Reject
        given[kw.arg] = _literal(kw.value)
    parts = []
    for p in params:
        if p.name not in given:
            if p.required:
                raise _Reject
            continue
        rendered = _check(p.kind, given[p.name])
        parts.append(rendered if p.required else f"{p.name}={rendered}")
    return f"{name}({', '.join(parts)})"


def parse_web_action(reply: str) -> str | None:
    """The canonical BrowserGym call a reply asks for, or None when it asks for none we allow.

    The reply must hold ``[action]`` followed by exactly one call of a function in :data:`ACTIONS`, with literal
    arguments of the expected kinds (element ids as strings, texts, keys, buttons, modifiers, numbers), written
    positionally or by name. Text before the tag is ignored (a model's thought); after it only the call, optionally
    with a trailing Python comment. The result is rebuilt from the values, e.g. ``[action] click('13')`` gives
    ``click("13")``. Never raises on any string.
    """
    if not isinstance(reply, str) or len(reply) > MAX_REPLY_CHARS:
        return None
    start = reply.find(ACTION_TAG)
    if start < 0:
        return None
    text = reply[start + len(ACTION_TAG) :].strip()
    if not text or len(text) > MAX_CALL_CHARS:
        return None
    try:
        return _call(text)
    except _Reject:
        return None
