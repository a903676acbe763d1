"""The pass registry: a decorator into one dict, built-ins found by module, plugins by entry point, each loaded when asked for."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import keyword
import pkgutil
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from fxbench.errors import PassOptionError, UnknownPassError
from fxbench.passes.base import FxbenchPass, NoOptions, PassOptions

__all__ = [
    "ENTRY_POINT_GROUP",
    "PassInfo",
    "available_passes",
    "builtin_modules",
    "create_pass",
    "get_pass",
    "parse_pass_spec",
    "register_pass",
    "option_help",
    "parse_options",
    "plugin_errors",
]

ENTRY_POINT_GROUP = "fxbench.passes"
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# Modules of fxbench.passes that hold the framework, not passes (private helpers start with "_").
_NOT_PASSES = {"base", "registry", "pipelines", "runner", "patterns"}

P = TypeVar("P", bound=type[FxbenchPass])


@dataclass(frozen=True)
class PassInfo:
    cls: type[FxbenchPass]
    origin: str  # "built-in" or "plugin (<distribution>)"


_REGISTRY: dict[str, PassInfo] = {}
_loaded = False  # every built-in and plugin imported (available_passes)
_plugin_errors: dict[str, str] = {}
_tried: set[str] = set()  # modules and entry points already imported, or tried
_current_origin = "built-in"


def register_pass(name: str) -> typing.Callable[[P], P]:
    """Class decorator: register a FxbenchPass subclass under `name` (kebab case, verb-object)."""

    def decorate(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, FxbenchPass)):
            raise TypeError(f"@register_pass({name!r}) decorates FxbenchPass subclasses, not {cls!r}")
        if not _NAME.match(name):
            raise ValueError(f"pass name {name!r} must be kebab case, such as 'fold-batchnorm'")
        if not (dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen):  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__name__}.Options must be a frozen dataclass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not cls:
            raise ValueError(f"pass {name!r} is registered twice: {existing.cls.__module__} and {cls.__module__}")
        cls.name = name
        if issubclass(cls.Options, PassOptions) and cls.Options is not NoOptions:
            cls.Options.pass_name = name  # validation errors name the pass
        _REGISTRY[name] = PassInfo(cls, _current_origin)
        return cls

    return decorate


def builtin_modules() -> list[str]:
    """The modules of fxbench.passes that hold passes, one pass each, named after it: every
    public module but the framework's. A new pass is a new file here, and nothing else."""
    import fxbench.passes as package

    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_") and m.name not in _NOT_PASSES)


def _import_builtin(module: str) -> None:
    if module not in _tried:
        _tried.add(module)
        importlib.import_module(f"fxbench.passes.{module}")


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The `fxbench.passes` entry points by name, read from package metadata (nothing imported)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_plugin(ep: importlib.metadata.EntryPoint) -> None:
    """Import one entry point's pass; a broken plugin is noted, never fatal."""
    global _current_origin
    if f"plugin:{ep.name}" in _tried:
        return
    _tried.add(f"plugin:{ep.name}")
    dist = ep.dist.name if ep.dist is not None else "unknown distribution"
    _current_origin = f"plugin ({dist})"
    try:
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, FxbenchPass) and obj.name not in _REGISTRY:
            register_pass(ep.name)(obj)
    except Exception as exc:  # noqa: BLE001 - a third party's import error must not break fxbench
        _plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
    finally:
        _current_origin = "built-in"


def available_passes() -> dict[str, PassInfo]:
    """Every registered pass, built-ins and plugins, by name: all of them imported (`passes list`)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in builtin_modules():
            _import_builtin(module)
        for ep in _entry_points().values():
            _load_plugin(ep)
    return dict(sorted(_REGISTRY.items()))


def plugin_errors() -> dict[str, str]:
    available_passes()
    return dict(_plugin_errors)


def get_pass(name: str) -> type[FxbenchPass]:
    """The pass registered as `name`, importing only what it takes: the built-in module of that
    name, else the entry point of that name (a plugin that fails to import is named in the error)."""
    if name in _REGISTRY:
        return _REGISTRY[name].cls
    if name.replace("-", "_") in builtin_modules():
        _import_builtin(name.replace("-", "_"))
    plugins = _entry_points()
    if name not in _REGISTRY and name in plugins:
        _load_plugin(plugins[name])
    if name not in _REGISTRY:
        known = sorted({*_REGISTRY, *(m.replace("_", "-") for m in builtin_modules()), *plugins})
        close = [n for n in known if n.split("-")[0] == name.split("-")[0] or name in n]
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `fxbench passes list`"
        extra = f" (its plugin failed to load: {_plugin_errors[name]})" if name in _plugin_errors else ""
        raise UnknownPassError(f"unknown pass {name!r}{extra}{hint}")
    return _REGISTRY[name].cls


# ----- options -------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _int_list(text: str) -> tuple[int, ...]:
    """'6-11' -> 6..11; '1,3,5' -> 1, 3, 5; ranges and single indices mix."""
    values: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if re.fullmatch(r"-?\d+", part):
            values.append(int(part))
        elif m := re.fullmatch(r"(\d+)-(\d+)", part):
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise ValueError(f"range {part} runs backwards")
            values.extend(range(lo, hi + 1))
        else:
            raise ValueError(f"{part!r} is not an index or a range such as 6-11")
    return tuple(values)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        inner = get_args(tp)[0]
        return "list of " + ("indices/ranges" if inner is int else _describe(inner))
    return getattr(tp, "__name__", str(tp))


def _convert(text: str, tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "") and type(None) in get_args(tp):
            return None
        errors = []
        for a in args:
            try:
                return _convert(text, a)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if str(c) == text:
                return c
        raise ValueError(f"{text!r} is not one of {', '.join(map(str, choices))}")
    if origin is tuple:
        inner = get_args(tp)[0]
        if inner is int:
            return _int_list(text)
        return tuple(_convert(p.strip(), inner) for p in text.split(",") if p.strip())
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{text!r} is not true or false")
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp is str:
        return text
    raise ValueError(f"options of type {tp} cannot be given on the command line")


def _split_options(text: str) -> list[tuple[str, str]]:
    """'a=1,b=x,y,c=2' -> [(a, '1'), (b, 'x,y'), (c, '2')]: a piece without '=' continues the
    previous value, so list options need no quoting."""
    pairs: list[list[str]] = []
    for piece in text.split(","):
        if "=" in piece:
            key, value = piece.split("=", 1)
            pairs.append([key.strip(), value.strip()])
        elif pairs:
            pairs[-1][1] += "," + piece.strip()
        elif piece.strip():
            raise ValueError(f"{piece.strip()!r} is not key=value")
    return [(k, v) for k, v in pairs]


def _cli_name(field: str) -> str:
    """An option's name on the command line: a field named after a Python keyword carries a
    trailing underscore (`with_`), which the user does not type (`with=`)."""
    return field[:-1] if field.endswith("_") and keyword.iskeyword(field[:-1]) else field


def parse_options(cls: type[FxbenchPass], text: str) -> Any:
    """Build `cls.Options` from 'field=value,...' text, with one-line errors naming the option."""
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    hints = get_type_hints(cls.Options)
    try:
        pairs = _split_options(text)
    except ValueError as exc:
        raise PassOptionError(f"pass {cls.name}: {exc}") from None
    values: dict[str, Any] = {}
    for key, raw in pairs:
        key = key.replace("-", "_")
        if keyword.iskeyword(key) and key + "_" in fields:
            key += "_"
        if key not in fields:
            known = ", ".join(map(_cli_name, fields)) or "none"
            raise PassOptionError(f"pass {cls.name} has no option {key!r}; its options: {known}")
        try:
            values[key] = _convert(raw, hints[key])
        except ValueError as exc:
            raise PassOptionError(f"pass {cls.name}: option {_cli_name(key)}={raw!r} is invalid: {exc} (expected {_describe(hints[key])})") from None
    try:
        return cls.Options(**values)
    except (TypeError, ValueError) as exc:
        raise PassOptionError(f"pass {cls.name}: {exc}") from None


def option_help(cls: type[FxbenchPass]) -> list[tuple[str, str, str]]:
    """(name, type, default) of each option, for `fxbench passes list`."""
    hints = get_type_hints(cls.Options)
    rows = []
    for f in dataclasses.fields(cls.Options):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required"  # type: ignore[misc]
        )
        rows.append((_cli_name(f.name), _describe(hints[f.name]), repr(default)))
    return rows


def parse_pass_spec(spec: str) -> tuple[str, str]:
    """'drop-layers:layers=6-11' -> ('drop-layers', 'layers=6-11')."""
    name, _, opts = spec.strip().partition(":")
    return name.strip(), opts.strip()


def create_pass(spec: str) -> FxbenchPass:
    """A pass instance from 'name' or 'name:option=value,...'."""
    name, opts = parse_pass_spec(spec)
    cls = get_pass(name)
    return cls(parse_options(cls, opts))
