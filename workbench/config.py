"""One dataclass per stage: the same source gives the CLI, ``--help`` and ``cfg.json``.

Each config is a plain ``@dataclass`` whose fields carry a docstring (a string literal on the
line after the field, as in EleutherAI's ``sparsify``). :func:`parse_config` turns it into an
``argparse`` parser, reads an optional TOML preset (``--preset configs/x.toml``), lets flags
override it and returns the resolved instance; :func:`save_config` / :func:`load_config` write
and read the resolved form beside every artefact.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from workbench.io import write_json

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or flag names an unknown field or holds a value of the wrong type."""


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass ``cls`` (and its bases) to the docstring written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert ``value`` (from TOML, JSON or the command line) to the field type ``tp``."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        raise ConfigError(f"field '{name}' may not be empty")
    origin = typing.get_origin(tp)
    try:
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                raise ConfigError(f"field '{name}' must be one of {choices}, got {value!r}")
            return value
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(tp) or (str,)
            items = value.split(",") if isinstance(value, str) else list(value)
            out = [coerce(name, item_tp, v) for v in items if v != ""]
            return tuple(out) if origin is tuple else out
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"field '{name}' must be true or false, got {value!r}")
        if tp is Path:
            return Path(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"field '{name}' must be an integer, got {value!r}")
        if tp in (int, float, str):
            return tp(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"field '{name}' expects {tp}, got {value!r}: {exc}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a mapping, refusing unknown keys and ill-typed values."""
    hints = _resolved_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: coerce(f"{source}:{k}", hints[k], v) for k, v in data.items()}
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready view of a config (paths as strings, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = [str(x) if isinstance(x, Path) else x for x in v]
        out[f.name] = v
    return out


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as JSON (``cfg.json`` beside an artefact)."""
    return write_json(path, to_dict(cfg))


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a config saved by :func:`save_config` (or a TOML preset) back into ``cls``."""
    path = Path(path)
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of fields, got {type(data).__name__}")
    return from_dict(cls, data, source=str(path))


def build_parser(cls: type, prog: str | None = None, description: str | None = None):
    """An ``argparse`` parser with one flag per field, help text from the field docstrings."""
    docs = field_docs(cls)
    hints = _resolved_types(cls)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or inspect.getdoc(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset", type=Path, default=None, help="TOML file of field values; flags override it."
    )
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = f.name.upper()
            if typing.get_origin(tp) is typing.Literal:
                kwargs["choices"] = typing.get_args(tp)
        parser.add_argument(flag, **kwargs)
    parser.set_defaults(_config_class=cls)
    return parser


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    """Defaults <- TOML preset <- command-line flags, validated; the one CLI entry for configs."""
    parser = build_parser(cls, prog=prog)
    ns = parser.parse_args(argv)
    data: dict[str, Any] = {}
    if ns.preset is not None:
        try:
            data.update(tomllib.loads(Path(ns.preset).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            parser.error(f"{ns.preset}: cannot read preset: {exc}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(ns, f.name)
        if value is not None:
            data[f.name] = value
    try:
        return from_dict(cls, data, source=str(ns.preset or "command line"))
    except ConfigError as exc:
        parser.error(str(exc))
        raise  # unreachable; parser.error exits
