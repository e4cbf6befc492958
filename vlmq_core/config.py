"""Config machinery: dataclasses <-> YAML, dotted overrides, strict checks, help text from field docstrings.

Every config section is a plain dataclass whose fields carry a docstring on the line below them (as in
``CleanRL``/``tyro``); :func:`field_help` reads those, so the dataclass is the one place a setting and its help
live. A run's whole config (``vlmq_core.run.RunConfig``) is a dataclass of such sections. This module knows
nothing of torch or of any section: it works for any dataclass.

    cfg = load(RunConfig, "configs/numberline_afsft.yaml", ["train.steps=400", "loss.beta=0.1"])
    save(cfg, "runs/x/config.yaml")

Unknown keys and wrong types raise :class:`ConfigError` with one sentence naming the key and the valid choices.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import os
import re
import textwrap
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """A config file, override or field value is wrong; the message names the key and what would be valid."""


# ---- help text -------------------------------------------------------------------------------------


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """``{field: help}`` from the string literal under each field of dataclass `cls` ("" when there is none)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (frozen app): no help, nothing breaks
        return {}
    body = tree.body[0].body  # the class statement's body
    out: dict[str, str] = {}
    for node, nxt in zip(body, [*body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = ""
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                doc = inspect.cleandoc(nxt.value.value)
            out[node.target.id] = doc
    return out


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def type_name(tp: Any) -> str:
    """A short human name of a field type: ``int``, ``float or None``, ``one of 'q', 'td'``, ``list of str``."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "None"
    if dataclasses.is_dataclass(tp):
        return tp.__name__
    return getattr(tp, "__name__", str(tp))


def options(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every settable key of dataclass `cls`, dotted: ``[(key, type name, default, help), ...]``.

    A list of dataclasses is shown as ``key.N.field`` (N the item index)."""
    rows = []
    docs = field_help(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows += options(tp, f"{key}.")
            continue
        item = get_args(tp)[0] if get_origin(tp) is list else None
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if item is not None and dataclasses.is_dataclass(item):
            rows.append((key, f"list of {item.__name__}", default, docs.get(f.name, "")))
            rows += options(item, f"{key}.N.")
            continue
        rows.append((key, type_name(tp), default, docs.get(f.name, "")))
    return rows


# ---- checking values ----------------------------------------------------------------------------------


def check(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp` (ints widen to float, numeric strings such as YAML's ``3e-4`` become numbers, mappings
    become dataclasses); ConfigError naming `key` when it is not one."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, f"{key}.")
        raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, not {value!r}.")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        for arg in sorted(args, key=lambda a: a is str):  # str last: "3e-4" is a number when a number is allowed
            try:
                return check(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {type_name(tp)}, not {value!r}.")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key} must be {type_name(tp)}, not {value!r}.")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, not {value!r}.")
        item = get_args(tp)[0]
        return [check(item, v, f"{key}.{i}") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} must be None (null), not {value!r}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, not {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, not {value!r}.")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return float(value)
        raise ConfigError(f"{key} must be a number, not {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, not {value!r}.")
    raise TypeError(f"config fields of type {tp!r} are not supported ({key})")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check (and coerce in place) every field of dataclass instance `obj`; call it from ``__post_init__``."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = check(hints[f.name], getattr(obj, f.name), f"{prefix}{f.name}")
        object.__setattr__(obj, f.name, value)


def require(obj: Any, prefix: str, rules: Mapping[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Refuse the first field of `obj` whose value breaks its rule, in one sentence that names the key, the rule
    and the value given (``train.steps must be >= 0, not -5.``); `rules` maps field names to (test, rule text)."""
    for name, (ok, rule) in rules.items():
        value = getattr(obj, name)
        if not ok(value):
            raise ConfigError(f"{prefix}{name} must be {rule}, not {value!r}.")


def _unknown(cls: type, key: str, prefix: str, full: str | None = None) -> ConfigError:
    """The error for `key` not being a field of `cls` (at `prefix`); `full` is the whole dotted key given."""
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" Did you mean {prefix}{close[0]}?" if close else ""
    where = f"of {prefix[:-1]}" if prefix else "at the top level"
    given = full or f"{prefix}{key}"
    return ConfigError(f"Unknown config key {given}: the valid keys {where} are {', '.join(names)}.{hint}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) mapping; missing keys keep their defaults, unknown keys raise."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix[:-1] or cls.__name__} must be a mapping of fields, not {data!r}.")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown(cls, str(key), prefix)
    hints = _hints(cls)
    kwargs = {k: check(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix[:-1] or cls.__name__}: {e}.") from e


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass instance as plain nested dicts and lists (field order kept), ready for YAML or JSON."""
    return dataclasses.asdict(obj)


# ---- overrides ------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.steps=400"`` -> ``("train.steps", 400)``; the value is read as YAML (``null``, ``true``, lists...)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override {text!r} is not of the form key=value (e.g. train.steps=400).")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set(data: dict, cls: type, path: list[str], value: Any, prefix: str = "") -> None:
    """Set ``data[path...] = value`` in the dict form of dataclass `cls`, checking each step of the path."""
    head, rest = path[0], path[1:]
    names = {f.name for f in dataclasses.fields(cls)}
    if head not in names:
        raise _unknown(cls, head, prefix, ".".join([prefix + head, *rest]) if rest else None)
    tp = _hints(cls)[head]
    key = f"{prefix}{head}"
    if not rest:
        data[head] = value
        return
    if dataclasses.is_dataclass(tp):
        _set(data.setdefault(head, {}), tp, rest, value, f"{key}.")
        return
    item = get_args(tp)[0] if get_origin(tp) is list else None
    if item is not None and dataclasses.is_dataclass(item):
        items = data.get(head) or []
        index = rest[0]
        if not index.isdigit() or int(index) >= len(items):
            raise ConfigError(f"{key}.{index}: {key} has {len(items)} items, indexed 0..{len(items) - 1}.")
        if rest[1:]:
            _set(items[int(index)], item, rest[1:], value, f"{key}.{index}.")
        else:
            items[int(index)] = value
        return
    raise ConfigError(f"{key} is a single value ({type_name(tp)}), so {key}.{'.'.join(rest)} does not exist.")


def apply_overrides(cfg: T, overrides: Iterable[str] | Mapping[str, Any] = ()) -> T:
    """A new config: `cfg` with dotted overrides (``["train.steps=400"]`` or ``{"train.steps": 400}``) applied."""
    pairs = overrides.items() if isinstance(overrides, Mapping) else [parse_override(o) for o in overrides]
    data = to_dict(cfg)
    for key, value in pairs:
        _set(data, type(cfg), key.split("."), value)
    return from_dict(type(cfg), data)


# ---- files ----------------------------------------------------------------------------------------------


def load(
    cls: type[T],
    path: str | os.PathLike | None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    prepare: Callable[[dict], dict] | None = None,
) -> T:
    """Read a YAML config file into dataclass `cls` (None: the defaults), then apply dotted overrides. `prepare`
    rewrites the file's mapping first (``RunConfig`` files expand their ``preset:`` key there)."""
    data: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file {p} does not exist; the shipped ones are in configs/.")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"Config file {p} is not valid YAML{where}: {what}; fix that line.") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"Config file {p} must be a mapping of keys, not {type(data).__name__}.")
    if prepare is not None:
        data = prepare(dict(data))
    return apply_overrides(from_dict(cls, data), overrides)


def dumps(cfg: Any) -> str:
    """The config as YAML text (every field, in declaration order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def json_text(obj: Any, indent: int | None = None) -> str:
    """`obj` as strict JSON: a float that is not finite (NaN: a metric undefined in that row, such as the agent's
    valid-syntax rate in an epoch without agent turns) is written as ``null``, which every JSON reader accepts
    (Python's default ``NaN`` is not JSON). :func:`vlmq_core.rundir.load_history` reads ``null`` back as NaN."""

    def finite(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, Mapping):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [finite(v) for v in x]
        return x

    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temp file in the same folder and a rename: a kill leaves the old file or
    the new one, never half of one. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def save(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the config as YAML atomically; returns the path."""
    return write_text_atomic(path, dumps(cfg))


def differences(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value in a, value in b)}`` for the keys whose values differ between two configs of one
    class, sorted by key (lists compare whole)."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()}
        return {prefix[:-1]: d}

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)}


def dumps_changes(cfg: Any) -> str:
    """The keys of `cfg` whose values differ from its class's defaults, one ``key: value`` YAML line each (a list
    whole): what a run chose, without the defaults' hundred lines."""
    changed = {key: now for key, (_, now) in differences(type(cfg)(), cfg).items()}
    return yaml.safe_dump(changed, sort_keys=False, allow_unicode=True, width=200) if changed else "(all defaults)\n"
