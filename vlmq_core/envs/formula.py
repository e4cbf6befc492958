"""Token formulas of the points games (EZPoints, Points24): syntax, exact evaluation and solvers.

A formula is a list of tokens: numbers (``"1"`` .. ``"10"``; a number is one token, never digits to
concatenate), the binary operators ``+ - * /`` and parentheses. Grammar (no unary operators)::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")"

Arithmetic is exact (:class:`fractions.Fraction`); division by zero makes a formula invalid. Formulas are
only ever parsed by the code below, never passed to ``eval``.

Two solvers complete a prefix into a formula with a target value that uses given numbers exactly once:
:func:`token_completion` (brute-force depth-first search over tokens; any operator set, with or without
parentheses; fine for two cards) and :func:`group_completion` (all four operators and parentheses; searches
over value sets of sub-multisets, fast for four cards).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from fractions import Fraction
from functools import cache, lru_cache
from itertools import combinations, product

OPERATORS = ("+", "-", "*", "/")
"""The binary operators, in action order."""
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


class FormulaError(ValueError):
    """A formula (or prefix) that is not well formed, or that divides by zero."""


def is_number(token: str) -> bool:
    """Whether `token` is a number token (a positive decimal integer such as ``"7"`` or ``"10"``)."""
    return token.isdecimal() and int(token) > 0


# ---------------------------------------------------------------- syntax of prefixes


def prefix_state(tokens: Sequence[str]) -> tuple[int, bool]:
    """``(open_parens, expects_operand)`` after reading the formula prefix `tokens`.

    Raises FormulaError when `tokens` cannot start any well-formed formula, e.g. ``["+"]`` or ``["3", "4"]``.
    """
    depth, expects = 0, True
    for i, token in enumerate(tokens):
        error = _token_error(depth, expects, token)
        if error is not None:
            raise FormulaError(f"token {i} ({token!r}): {error}")
        depth, expects = _advance(depth, token)
    return depth, expects


def next_token_error(prefix: Sequence[str], token: str) -> str | None:
    """Why appending `token` to the valid prefix `prefix` breaks the syntax, or None when it is fine."""
    depth, expects = prefix_state(prefix)
    return _token_error(depth, expects, token)


def _token_error(depth: int, expects: bool, token: str) -> str | None:
    """The syntax error of `token` in a state ``(depth, expects_operand)``, or None."""
    if is_number(token):
        return None if expects else "a number cannot follow a number or ')'"
    if token == "(":
        return None if expects else "'(' cannot follow a number or ')'"
    if token in OPERATORS:
        return "an operator needs a number or ')' before it" if expects else None
    if token == ")":
        if expects:
            return "')' needs a number or ')' before it"
        return None if depth > 0 else "')' has no matching '('"
    return f"unknown token {token!r}"


def _advance(depth: int, token: str) -> tuple[int, bool]:
    """``(open_parens, expects_operand)`` after the (valid) `token`."""
    if token == "(":
        return depth + 1, True
    if token == ")":
        return depth - 1, False
    return depth, token in OPERATORS


# ---------------------------------------------------------------- evaluation (recursive descent)


def evaluate(tokens: Sequence[str]) -> Fraction:
    """The exact value of the complete formula `tokens`; FormulaError if malformed or dividing by zero.

    ``evaluate(["(", "3", "+", "1", ")", "*", "6"]) == 24``; ``evaluate(["1", "/", "(", "2", "-", "2", ")"])``
    raises FormulaError("division by zero").
    """
    return _Parser(tokens).parse()


class _Parser:
    """Recursive-descent parser over a token list that evaluates as it parses."""

    def __init__(self, tokens: Sequence[str]):
        self.tokens = list(tokens)
        self.pos = 0

    def parse(self) -> Fraction:
        if not self.tokens:
            raise FormulaError("empty formula")
        value = self._expr()
        if self.pos != len(self.tokens):
            raise FormulaError(f"unexpected {self.tokens[self.pos]!r} at token {self.pos}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise FormulaError("formula ends too early")
        self.pos += 1
        return token

    def _expr(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self._take()
            right = self._term()
            value = value + right if op == "+" else value - right
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while self._peek() in ("*", "/"):
            op = self._take()
            right = self._factor()
            if op == "*":
                value = value * right
            elif right == 0:
                raise FormulaError("division by zero")
            else:
                value = value / right
        return value

    def _factor(self) -> Fraction:
        at = self.pos
        token = self._take()
        if is_number(token):
            return Fraction(int(token))
        if token == "(":
            value = self._expr()
            if self._take() != ")":
                raise FormulaError(f"'(' at token {at} is not closed")
            return value
        raise FormulaError(f"expected a number or '(' at token {at}, got {token!r}")


# ---------------------------------------------------------------- incremental evaluation of prefixes

_Frame = tuple[Fraction, int, "Fraction | None", "str | None"]
"""One parenthesis level of a partial evaluation: (sum of finished terms, sign of the current term,
the current term's product so far or None before its first operand, pending ``*``/``/`` or None)."""
_EMPTY: _Frame = (Fraction(0), 1, None, None)


def _feed(frames: tuple[_Frame, ...], value: Fraction) -> tuple[_Frame, ...] | None:
    """`frames` after an operand `value` arrives in the innermost level; None on division by zero."""
    total, sign, term, mul = frames[-1]
    if term is None:
        term = value
    elif mul == "*":
        term = term * value
    elif value == 0:
        return None
    else:
        term = term / value
    return (*frames[:-1], (total, sign, term, None))


def _step(frames: tuple[_Frame, ...], token: str) -> tuple[_Frame, ...] | None:
    """`frames` after the syntactically valid `token`; None on division by zero."""
    if is_number(token):
        return _feed(frames, Fraction(int(token)))
    total, sign, term, mul = frames[-1]
    if token in ("+", "-"):
        return (*frames[:-1], (total + sign * term, 1 if token == "+" else -1, None, None))
    if token in ("*", "/"):
        return (*frames[:-1], (total, sign, term, token))
    if token == "(":
        return (*frames, _EMPTY)
    return _feed(frames[:-1], total + sign * term)  # ")"


def _read_prefix(numbers: Iterable[int], prefix: Sequence[str]) -> tuple[tuple[_Frame, ...], tuple[int, ...]] | None:
    """``(frames, numbers left)`` after `prefix`, or None if it is malformed, divides by zero, or uses a
    number not in `numbers` (or more often than it occurs)."""
    left = Counter(numbers)
    try:
        prefix_state(prefix)
    except FormulaError:
        return None
    frames: tuple[_Frame, ...] | None = (_EMPTY,)
    for token in prefix:
        if is_number(token):
            left[int(token)] -= 1
            if left[int(token)] < 0:
                return None
        frames = _step(frames, token)
        if frames is None:
            return None
    return frames, tuple(sorted(left.elements()))


# ---------------------------------------------------------------- brute force over tokens


def token_completion(
    numbers: Iterable[int],
    target: int,
    prefix: Sequence[str] = (),
    *,
    operators: Sequence[str] = OPERATORS,
    parens: bool = True,
    max_len: int = 20,
) -> tuple[str, ...] | None:
    """The first (in token order) tokens completing `prefix` into a formula equal to `target` that uses each
    of `numbers` exactly once, with at most `max_len` tokens in all; None if there is none.

    Depth-first over next tokens (numbers ascending, ``(`` when `parens`, then `operators`, then ``)``) with
    exact incremental evaluation. Being lexicographically first, the answer for ``prefix + [c]`` is the
    rest of the answer for `prefix` whenever that starts with ``c``. Exponential with parentheses: use it
    for two cards or as a reference; :func:`group_completion` handles four.
    """
    read = _read_prefix(numbers, prefix)
    if read is None:
        return None
    if any((t in OPERATORS and t not in operators) or (t in ("(", ")") and not parens) for t in prefix):
        return None
    goal = Fraction(target)
    failed: set[tuple] = set()

    def search(frames: tuple[_Frame, ...], remaining: tuple[int, ...], length: int) -> tuple[str, ...] | None:
        depth = len(frames) - 1
        total, sign, term, mul = frames[-1]
        expects = term is None or mul is not None
        k = len(remaining)
        if length + (2 * k - 1 if expects else 2 * k) + depth > max_len:
            return None
        key = (frames, remaining, length)
        if key in failed:
            return None
        if not expects and k == 0 and depth == 0 and total + sign * term == goal:
            return ()
        if expects:
            moves = [str(n) for n in sorted(set(remaining))] + (["("] if parens and k >= 2 else [])
        else:
            moves = (list(operators) if k else []) + ([")"] if depth else [])
        for token in moves:
            nxt = _step(frames, token)
            if nxt is None:
                continue
            rest = remaining
            if is_number(token):
                i = remaining.index(int(token))
                rest = remaining[:i] + remaining[i + 1 :]
            found = search(nxt, rest, length + 1)
            if found is not None:
                return (token, *found)
        failed.add(key)
        return None

    return search(read[0], read[1], len(prefix))


# ---------------------------------------------------------------- expressions and value sets

Expr = int | tuple[str, "Expr", "Expr"]
"""An expression tree: a number, or ``(operator, left, right)``."""


@lru_cache(maxsize=512)
def expressions(numbers: tuple[int, ...]) -> dict[Fraction, Expr]:
    """Every value a formula using each of `numbers` exactly once can take (``+ - * /``, parentheses),
    mapped to one expression with that value. Deterministic order; LRU-cached per multiset (for four
    numbers a dict holds about 400 values, so the cache stays below ~50 MB).

    Splits the multiset into two non-empty parts in every way (the smallest number always on the first
    side, both operand orders tried) and combines their value sets; division by zero is skipped.
    """
    numbers = tuple(sorted(numbers))
    if len(numbers) == 1:
        return {Fraction(numbers[0]): numbers[0]}
    found: dict[Fraction, Expr] = {}
    for left, right in _splits(numbers):
        for (a, ea), (b, eb) in product(expressions(left).items(), expressions(right).items()):
            for value, expr in _combine(a, ea, b, eb):
                found.setdefault(value, expr)
    return found


def _combine(a: Fraction, ea: Expr, b: Fraction, eb: Expr) -> list[tuple[Fraction, Expr]]:
    """Every ``(value, expression)`` of one operator applied to the two operands, either order."""
    out = [(a + b, ("+", ea, eb)), (a * b, ("*", ea, eb)), (a - b, ("-", ea, eb)), (b - a, ("-", eb, ea))]
    if b:
        out.append((a / b, ("/", ea, eb)))
    if a:
        out.append((b / a, ("/", eb, ea)))
    return out


def reachable_values(numbers: Iterable[int]) -> frozenset[Fraction]:
    """The set of values of all formulas using each of `numbers` exactly once (see :func:`expressions`)."""
    return frozenset(expressions(tuple(sorted(numbers))))


@cache
def _splits(numbers: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """The distinct splits of a sorted multiset into (part with numbers[0], the non-empty rest)."""
    first, rest = numbers[0], numbers[1:]
    seen = {}
    for r in range(len(rest)):
        for chosen in combinations(range(len(rest)), r):
            left = (first, *(rest[i] for i in chosen))
            seen.setdefault(left, tuple(rest[i] for i in range(len(rest)) if i not in chosen))
    return tuple(seen.items())


@lru_cache(maxsize=65536)
def find_expression(numbers: tuple[int, ...], target: Fraction | int) -> Expr | None:
    """An expression using each of `numbers` once with value `target`, or None (exact; LRU-cached).

    Cheaper than building the whole value set: per split it enumerates the values of the side with the
    smallest number and looks up the one right-hand value each operator would need, so only value sets
    of smaller multisets are built. The expression is the first found in that order.
    """
    numbers = tuple(sorted(numbers))
    goal = Fraction(target)
    if len(numbers) == 1:
        return numbers[0] if numbers[0] == goal else None
    for left, right in _splits(numbers):
        rights = expressions(right)
        for a, ea in expressions(left).items():
            needed = [("+", goal - a, False), ("-", a - goal, False), ("-", a + goal, True)]  # a+b, a-b, b-a
            if a:
                needed += [("*", goal / a, False), ("/", goal * a, True)]  # a*b, b/a
                if goal:
                    needed.append(("/", a / goal, False))  # a/b
            elif not goal:
                return ("*", ea, next(iter(rights.values())))  # 0 * b
            for op, b, b_first in needed:
                if b in rights:
                    return (op, rights[b], ea) if b_first else (op, ea, rights[b])
    return None


def solvable(numbers: Iterable[int], target: int) -> bool:
    """Whether some formula using each of `numbers` exactly once equals `target`."""
    return find_expression(tuple(sorted(numbers)), Fraction(target)) is not None


@lru_cache(maxsize=4096)
def closest_expression(numbers: tuple[int, ...], target: int) -> Expr:
    """The expression over all of `numbers` whose value is closest to `target` (ties: the smaller value,
    then the first found); streams over splits without storing the whole value set of `numbers`."""
    numbers = tuple(sorted(numbers))
    goal = Fraction(target)
    if len(numbers) == 1:
        return numbers[0]
    best: tuple[Fraction, Fraction, Expr] | None = None
    for left, right in _splits(numbers):
        for (a, ea), (b, eb) in product(expressions(left).items(), expressions(right).items()):
            for value, expr in _combine(a, ea, b, eb):
                if best is None or (abs(value - goal), value) < best[:2]:
                    best = (abs(value - goal), value, expr)
    return best[2]


def render(expr: Expr) -> tuple[str, ...]:
    """The tokens of `expr` with the fewest parentheses, e.g. ``("*", 4, ("-", 7, 1))`` -> ``4 * ( 7 - 1 )``."""
    if isinstance(expr, int):
        return (str(expr),)
    op, left, right = expr
    return (*_operand(left, op, right=False), op, *_operand(right, op, right=True))


def _needs_parens(expr: Expr, op: str, right: bool) -> bool:
    """Whether `expr` needs parentheses as the left/right operand of `op`."""
    if isinstance(expr, int):
        return False
    inner = _PRECEDENCE[expr[0]]
    return inner < _PRECEDENCE[op] or (right and inner == _PRECEDENCE[op] and op in ("-", "/"))


def _operand(expr: Expr, op: str, right: bool) -> tuple[str, ...]:
    """`expr`'s tokens as an operand of `op`, parenthesised if needed."""
    tokens = render(expr)
    return ("(", *tokens, ")") if _needs_parens(expr, op, right) else tokens


@cache
def _submultisets(numbers: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Every distinct ``(part, rest)`` of a sorted multiset, largest part first (the empty part last)."""
    counts = sorted(Counter(numbers).items())
    parts = []
    for picks in product(*(range(c + 1) for _, c in counts)):
        part = tuple(n for (n, _), k in zip(counts, picks, strict=True) for _ in range(k))
        rest = tuple(n for (n, c), k in zip(counts, picks, strict=True) for _ in range(c - k))
        parts.append((part, rest))
    return tuple(sorted(parts, key=lambda pr: -len(pr[0])))


# ---------------------------------------------------------------- completing a prefix with groups


def group_completion(
    numbers: Iterable[int], target: int, prefix: Sequence[str] = (), *, max_len: int = 20
) -> tuple[str, ...] | None:
    """Tokens completing `prefix` into a formula equal to `target` that uses each of `numbers` exactly once
    (``+ - * /`` and parentheses), at most `max_len` tokens in all; None if the search finds none.

    Why it is complete: whatever follows a partial term can be regrouped into at most two operands per open
    level, an optional ``* X`` / ``/ X`` (a product/quotient chain is one value X) and then an optional
    ``+ Y`` / ``- Y`` (the later additive terms, one value Y); then ``)`` closes the level and the outer
    level continues the same way. X and Y range over the values of sub-multisets of the numbers left,
    written with minimal parentheses; on the outermost level the last operand is solved for
    (:func:`find_expression`) instead of enumerated. Regrouped continuations can be a few tokens longer than
    the shortest one, so close to `max_len` a completion may be missed.
    """
    read = _read_prefix(numbers, prefix)
    if read is None:
        return None
    frames, remaining = read
    goal = Fraction(target)
    memo: dict[tuple, tuple[str, ...] | None] = {}

    def complete(frames: tuple[_Frame, ...], remaining: tuple[int, ...], budget: int) -> tuple[str, ...] | None:
        key = (frames, remaining, budget)
        if key not in memo:
            memo[key] = _complete_level(frames, remaining, budget, goal, complete)
        return memo[key]

    return complete(frames, remaining, max_len - len(prefix))


def _complete_level(frames, remaining, budget, goal, complete) -> tuple[str, ...] | None:
    """One level of :func:`group_completion`: choose X (and Y), close the level, recurse outwards."""
    total, sign, term, mul = frames[-1]
    outermost = len(frames) == 1
    for x_part, after_x in _submultisets(remaining):
        if outermost and x_part and not after_x:  # X is the last operand: solve for it
            for tokens in _x_solutions(x_part, term, mul, sign, (goal - total) * sign):
                if len(tokens) <= budget:
                    return tokens
            continue
        for x_op, x, x_tokens in _x_choices(x_part, term, mul, sign):
            new_term = _apply(term, x_op, x)
            if new_term is None:
                continue
            base = total + sign * new_term
            if outermost:  # Y is the last operand: solve for it
                for y_tokens in _y_solutions(after_x, goal - base):
                    tokens = x_tokens + y_tokens
                    if len(tokens) <= budget:
                        return tokens
                continue
            for y_part, rest in _submultisets(after_x):
                for y_tokens, y in _y_choices(y_part):
                    tokens = (*x_tokens, *y_tokens, ")")
                    if len(tokens) > budget:
                        continue
                    outer = _feed(frames[:-1], base + y)
                    if outer is None:
                        continue
                    found = complete(outer, rest, budget - len(tokens))
                    if found is not None:
                        return tokens + found
    return None


def _apply(term: Fraction | None, op: str | None, x: Fraction | None) -> Fraction | None:
    """The current term after ``op x`` (x None: nothing appended); None on division by zero."""
    if x is None or term is None:
        return x if term is None else term
    if op == "*":
        return term * x
    return None if x == 0 else term / x


def _x_tokens(expr: Expr, term, mul, sign, op: str | None) -> tuple[str, ...]:
    """Tokens of the operand X written after the current term (with `op`, unless one is pending)."""
    if term is None:  # the level's first operand, or the operand after + / -
        paren = sign < 0 and _needs_parens(expr, "-", right=True)
        return ("(", *render(expr), ")") if paren else render(expr)
    if mul is not None:  # a pending * or / from the prefix
        return _operand(expr, mul, right=True)
    return (op, *_operand(expr, op, right=True))


def _x_ops(term, mul) -> tuple[str | None, ...]:
    """The operators that can bring in X: none before a level's first operand, the pending one, or * and /."""
    if term is None:
        return (None,)
    return (mul,) if mul is not None else ("*", "/")


def _x_choices(part: tuple[int, ...], term, mul, sign):
    """``(op, value, tokens)`` for the multiplicative operand X made of `part` (empty part: no X)."""
    if not part:
        if term is not None and mul is None:
            yield None, None, ()
        return
    for x, expr in expressions(part).items():
        for op in _x_ops(term, mul):
            yield op, x, _x_tokens(expr, term, mul, sign, op)


def _x_solutions(part: tuple[int, ...], term, mul, sign, needed_term: Fraction):
    """Tokens of an X made of all of `part` that turns the current term into `needed_term`."""
    for op in _x_ops(term, mul):
        if op is None:
            candidates = [needed_term]
        elif op == "*":
            if term:
                candidates = [needed_term / term]
            else:  # 0 * x: any x when 0 is needed
                candidates = [next(iter(expressions(part)))] if needed_term == 0 else []
        elif needed_term:
            candidates = [term / needed_term] if term else []
        else:  # 0 / x == 0 for any x != 0
            candidates = [x for x in expressions(part) if x][:1] if term == 0 else []
        for x in candidates:
            expr = find_expression(part, x)
            if expr is not None:
                yield _x_tokens(expr, term, mul, sign, op)


def _y_choices(part: tuple[int, ...]):
    """``(tokens, signed value)`` of the additive tail ``+ Y`` / ``- Y`` made of `part` (empty: none)."""
    if not part:
        yield (), Fraction(0)
        return
    for y, expr in expressions(part).items():
        yield ("+", *render(expr)), y
        yield ("-", *_operand(expr, "-", right=True)), -y


def _y_solutions(part: tuple[int, ...], needed: Fraction):
    """Tokens of an additive tail made of all of `part` adding exactly `needed`."""
    if not part:
        if needed == 0:
            yield ()
        return
    plus = find_expression(part, needed)
    if plus is not None:
        yield ("+", *render(plus))
    minus = find_expression(part, -needed)
    if minus is not None:
        yield ("-", *_operand(minus, "-", right=True))
