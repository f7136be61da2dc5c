"""Config = dataclasses + YAML + dotted overrides.

Every verb that writes an output folder describes its knobs as a dataclass. A run is configured in
three layers, later wins: the dataclass defaults, a YAML file (`--config x.yaml`), then `key=value`
overrides on the command line (`split.seed=7`, `filters.min_findings_words=3`). The resolved config
is written as `config.yaml` into the output folder so a run can be reproduced or reloaded exactly.

Unknown keys are an error that lists the closest real keys: a typo must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says where and why."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, prefix + name + "."))
    return keys


def _unknown_key(cls: type, key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(cls), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(_all_keys(cls))}"
    return ConfigError(f"{where}: unknown config key '{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: '{key}' cannot be {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, key, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: '{key}' must be true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: '{key}' must be {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return "" if value is None else str(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, where, key + ".")
    return value


def _build(cls: type[T], data: dict, where: str, prefix: str = "", base: T | None = None) -> T:
    types_ = _field_types(cls)
    obj = base if base is not None else cls()
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key(cls, prefix + key, where)
        tp = types_[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            setattr(obj, key, _build(tp, value, where, prefix + key + ".", getattr(obj, key)))
        else:
            setattr(obj, key, _coerce(value, tp, prefix + key, where))
    return obj


def apply_override(cfg: Any, assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML (so 3, true, [a,b])."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}': expected key=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    obj, parts = cfg, key.split(".")
    root = type(cfg)
    for i, part in enumerate(parts):
        types_ = _field_types(type(obj))
        if part not in types_:
            raise _unknown_key(root, key, "override")
        if i == len(parts) - 1:
            setattr(obj, part, _coerce(value, types_[part], key, "override"))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"override: '{'.'.join(parts[: i + 1])}' is not a section")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults ← YAML file ← overrides. Raises ConfigError with the file/key and reason."""
    cfg = cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of config keys")
        cfg = _build(cls, data, str(path), base=cfg)
    for assignment in overrides or []:
        apply_override(cfg, assignment)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def write_resolved(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config into the output folder (the run-folder contract)."""
    out = Path(out_dir) / name
    out.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the dataclass source: the comment lines above it and the one after it."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    src = textwrap.dedent(inspect.getsource(cls))
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokenize.generate_tokens(io.StringIO(src).readline)
                if t.type == tokenize.COMMENT}
    code_lines = {n for n, line in enumerate(src.splitlines(), 1) if line.strip() and not line.strip().startswith("#")}
    out = {}
    for node in ast.parse(src).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, n = [], node.lineno - 1
            while n > 0 and n in comments and n not in code_lines:
                above.insert(0, comments[n])
                n -= 1
            trailing = [comments[node.end_lineno]] if node.end_lineno in comments else []
            out[node.target.id] = " ".join(above + trailing)
    return out


def config_help(cfg: Any, width: int = 100) -> str:
    """A verb's `--help` list of config keys: each key of the `cfg` dataclass (nested ones dotted), its default
    and the comment written beside it in the source — so a field's comment is its documentation."""
    import textwrap

    def show(v) -> str:
        text = "[" + ", ".join(map(str, v)) + "]" if isinstance(v, list) else ('""' if v == "" else str(v))
        return text if len(text) <= 40 else text[:37] + "..."

    lines = ["config keys (in the --config YAML, or key=value after the options; default after =):"]

    def walk(obj, prefix: str) -> None:
        notes = field_comments(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
                continue
            head = f"  {prefix}{f.name} = {show(value)}"
            text = head + (f"  — {notes[f.name]}" if notes.get(f.name) else "")
            lines.extend(textwrap.wrap(text, width, subsequent_indent=" " * 6, break_on_hyphens=False))

    walk(cfg, "")
    return "\n".join(lines)
