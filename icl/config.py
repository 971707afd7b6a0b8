"""Typed, range-checked dataclass configs with dotted overrides: config validation in one place.

Every config of the framework is a frozen dataclass deriving from :class:`Config`. Fields are declared with
:func:`spec`, which records the allowed range or choices; ``__post_init__`` checks every field (type, range,
choices) and then the config's own cross-field rules (:meth:`Config.check`). Because construction validates,
a config that exists is a valid one, and a bad value fails before any compute with a message that names the
field, the value and what is allowed.

Overrides from the command line use dotted keys (``train.lr=3e-3``), are coerced to the field's type, and an
unknown key is rejected with the nearest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type, or out of range.

    ``qualified`` marks a message that already names the full dotted path (``prompt.d``), so that enclosing
    sections do not prefix it again.
    """

    def __init__(self, message: str, *, qualified: bool = False) -> None:
        super().__init__(message)
        self.qualified = qualified


_FIELD_HEAD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _in_section(section: str, cls: type, err: ConfigError) -> ConfigError:
    """The error of a nested config re-worded with its section's dotted path (``d = 0`` -> ``prompt.d = 0``).

    A message that starts with one of ``cls``'s field names gets ``section.`` prepended; any other message
    (a cross-field rule worded freely) gets ``section: `` prepended, so the reader always knows where to look.
    """
    msg = str(err)
    if not section or err.qualified:
        return err
    m = _FIELD_HEAD.match(msg)
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    new = f"{section}.{msg}" if m and m.group(0) in names else f"{section}: {msg}"
    return ConfigError(new)


def spec(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Iterable[Any] | None = None,
    allow_empty: bool = False,
    allow_repeats: bool = False,
    doc: str = "",
) -> Any:
    """A dataclass field with its allowed range or choices recorded for validation.

    Bounds apply to a number, or to every element of a tuple of numbers. A tuple field (a list of seeds, depths,
    methods, …) must hold at least one entry and no entry twice (a repeated seed would be averaged twice, a
    repeated depth would duplicate rows) unless declared with ``allow_empty`` or ``allow_repeats`` (a spectrum
    such as eigenvalues = 1,1,0.25 repeats values by design); fields declared without :func:`spec` follow the
    same rules.
    """
    meta = {
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "choices": tuple(choices) if choices else None,
        "allow_empty": allow_empty,
        "allow_repeats": allow_repeats,
        "doc": doc,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def _range_text(meta: Mapping[str, Any]) -> str:
    parts = []
    if meta.get("gt") is not None:
        parts.append(f"> {meta['gt']}")
    if meta.get("ge") is not None:
        parts.append(f">= {meta['ge']}")
    if meta.get("lt") is not None:
        parts.append(f"< {meta['lt']}")
    if meta.get("le") is not None:
        parts.append(f"<= {meta['le']}")
    return " and ".join(parts)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True  # noqa: UP007
    return tp, False


def _check_number(path: str, v: Any, meta: Mapping[str, Any]) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{path} = {v!r} must be finite")
    for key, ok in (
        ("ge", lambda a, b: a >= b),
        ("gt", lambda a, b: a > b),
        ("le", lambda a, b: a <= b),
        ("lt", lambda a, b: a < b),
    ):
        bound = meta.get(key)
        if bound is not None and not ok(v, bound):
            raise ConfigError(f"{path} = {v!r} is out of range: must be {_range_text(meta)}")


def _check_list(path: str, value: tuple, meta: Mapping[str, Any]) -> None:
    """A tuple field holds at least one entry and none twice, unless its spec allows it."""
    if not value and not meta.get("allow_empty"):
        raise ConfigError(f"{path} is empty: give at least one value")
    if not meta.get("allow_repeats"):
        seen: set[Any] = set()
        for x in value:
            if x in seen:
                raise ConfigError(f"{path} = {_show(value)} repeats {x!r}: give each value once")
            seen.add(x)


def _show(value: tuple) -> str:
    return ",".join(str(x) for x in value)


def _check_type(path: str, v: Any, tp: Any) -> Any:
    """Check (and lightly normalise: int -> float, list -> tuple) a value against a type hint."""
    tp, optional = _strip_optional(tp)
    if v is None:
        if optional:
            return None
        raise ConfigError(f"{path} must not be None")
    origin = typing.get_origin(tp)
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{path} must be a number, got {v!r}")
        return float(v)
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise ConfigError(f"{path} must be an integer, got {v!r}")
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{path} must be true or false, got {v!r}")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{path} must be a string, got {v!r}")
        return v
    if origin is tuple:
        if not isinstance(v, (tuple, list)):
            raise ConfigError(f"{path} must be a sequence, got {v!r}")
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        return tuple(_check_type(f"{path}[{i}]", x, elem) for i, x in enumerate(v))
    if dataclasses.is_dataclass(tp):
        if isinstance(v, Mapping):
            return tp.from_dict(v, prefix=path)
        if not isinstance(v, tp):
            raise ConfigError(f"{path} must be a {tp.__name__}, got {type(v).__name__}")
        return v
    return v


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: validates every field on construction. Subclasses add cross-field rules in :meth:`check`."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            path = f.name
            value = _check_type(path, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
            meta = f.metadata
            if meta.get("choices") is not None and value is not None and value not in meta["choices"]:
                choices = ", ".join(repr(c) for c in meta["choices"])
                near = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=3, cutoff=0.5)
                hint = f" (did you mean: {', '.join(repr(x) for x in near)}?)" if near else ""
                raise ConfigError(f"{path} = {value!r} is not one of: {choices}{hint}")
            if value is None or isinstance(value, (str, bool)) or dataclasses.is_dataclass(value):
                continue
            if isinstance(value, tuple):
                _check_list(path, value, meta)
            values = value if isinstance(value, tuple) else (value,)
            for i, x in enumerate(values):
                if isinstance(x, (int, float)) and not isinstance(x, bool):
                    _check_number(f"{path}[{i}]" if isinstance(value, tuple) else path, x, meta)
        self.check()

    def check(self) -> None:
        """Cross-field rules; raise :class:`ConfigError` naming the fields."""

    # -- conversion --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready nested dict (tuples become lists)."""

        def conv(v: Any) -> Any:
            if isinstance(v, Config):
                return v.to_dict()
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
        """Build from a nested mapping, rejecting unknown keys with the nearest valid names."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix or cls.__name__} must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(_unknown(f"{prefix}.{key}" if prefix else key, cls, prefix), qualified=True)
        try:
            return cls(**dict(data))
        except ConfigError as e:
            raise _in_section(prefix, cls, e) from None

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self: C, overrides: Mapping[str, Any] | Iterable[str]) -> C:
        """Apply dotted overrides, given as ``{"train.lr": 0.01}`` or ``["train.lr=0.01"]`` strings.

        String values are coerced to the field's type: numbers, booleans (true/false), ``none``, and
        comma-separated tuples (``prompt.eigenvalues=1,1,0.25``).
        """
        if not isinstance(overrides, Mapping):
            parsed = {}
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} must look like key=value")
                k, v = item.split("=", 1)
                parsed[k.strip()] = v.strip()
            overrides = parsed
        cfg = self
        for key, value in overrides.items():
            cfg = cfg._set(key.split("."), value, full=key)
        return cfg

    def _set(self: C, parts: list[str], value: Any, full: str) -> C:
        names = {f.name: f for f in dataclasses.fields(self)}
        head = parts[0]
        prefix = full[: len(full) - len(".".join(parts))].rstrip(".")
        if head not in names:
            raise ConfigError(_unknown(full, type(self), prefix), qualified=True)
        current = getattr(self, head)
        if len(parts) > 1:
            if not isinstance(current, Config):
                raise ConfigError(f"{full}: {head} is not a section, it has no field {parts[1]!r}", qualified=True)
            try:
                new = current._set(parts[1:], value, full)
            except ConfigError as e:
                raise _in_section(head, type(current), e) from None
        else:
            if isinstance(current, Config):
                raise ConfigError(f"{full} is a section; set one of its fields, e.g. {full}.<field>", qualified=True)
            new = coerce(full, value, _hints(type(self))[head]) if isinstance(value, str) else value
        return dataclasses.replace(self, **{head: new})

    @classmethod
    def field_names(cls, prefix: str = "") -> list[str]:
        """All dotted leaf names of this config."""
        out = []
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp, _ = _strip_optional(hints[f.name])
            name = f"{prefix}{f.name}"
            if isinstance(tp, type) and issubclass(tp, Config):
                out.extend(tp.field_names(name + "."))
            else:
                out.append(name)
        return out


def _unknown(key: str, cls: type[Config], prefix: str) -> str:
    valid = cls.field_names(prefix + "." if prefix else "")
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(near)}?" if near else ""
    return f"unknown config key {key!r}.{hint} Valid keys: {', '.join(valid)}"


def coerce(path: str, text: str, tp: Any) -> Any:
    """Convert a command-line string to a value of type ``tp`` (raising ConfigError naming ``path``)."""
    tp, optional = _strip_optional(tp)
    low = text.strip().lower()
    if optional and low in ("none", "null"):
        return None
    if optional and not low:
        raise ConfigError(f"{path} = '' has no value: give one, or {path}=none to unset it", qualified=True)
    try:
        if tp is bool:
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            f = float(text)
            if not f.is_integer():
                raise ValueError
            return int(f)
        if tp is float:
            return float(text)
        if typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            elem = args[0] if args else str
            items = [t for t in text.strip("()[] ").split(",") if t.strip()]
            return tuple(coerce(f"{path}[{i}]", t.strip(), elem) for i, t in enumerate(items))
    except ValueError:
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{path} = {text!r} is not a valid {name}", qualified=True) from None
    return text
