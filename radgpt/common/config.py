"""Config = dataclasses + YAML + flags + dotted overrides.

Every verb describes its knobs as a dataclass whose field comments are their documentation. A run is
configured in layers, later wins:

    dataclass defaults  <-  --config FILE.yaml  <-  --flags  <-  key=value overrides

Flags are the friendly spelling of the same keys (`--max-new-tokens 64` is `max_new_tokens=64`), made from
the fields by `add_config_flags`, so the flag list is not written twice. Overrides are dotted
(`split.seed=7`, `create.n_cases=50`). A verb that writes an output folder writes the resolved config there
as `config.yaml`, so a run can be reproduced or reloaded exactly.

Unknown keys are an error that lists the closest real keys: a typo must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says where and why."""


@functools.cache  # once per class and process
def _field_types(cls: type) -> dict[str, Any]:
    """{field name: its type}. Under `from __future__ import annotations` the types are strings; they are
    evaluated in one expression, since typing.get_type_hints compiles each one apart (≈2 ms a config class,
    paid on every start of a verb whose flags are made from its config)."""
    fields = dataclasses.fields(cls)
    module = sys.modules.get(cls.__module__)
    if module is not None and fields and all(isinstance(f.type, str) for f in fields):
        try:
            values = eval("(" + "".join(f"{f.type}," for f in fields) + ")", dict(vars(module)))
            return {f.name: v for f, v in zip(fields, values)}
        except Exception:  # a name only typing's rules resolve (e.g. a class local to a function)
            pass
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields}


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


def _kind(tp: Any) -> str:
    """A type as an error message names it: int, 'auto', a list, ..."""
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                kinds.append(_kind(arg))
        raise ConfigError(f"{where}: '{key}' must be {' or '.join(kinds)}, got {value!r}")
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


def _assign(cfg: Any, key: str, value: Any, where: str) -> None:
    """Set the dotted `key` of `cfg` to `value` (converted to the field's type) in place."""
    obj, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        types_ = _field_types(type(obj))
        if part not in types_:
            raise _unknown_key(type(cfg), key, where)
        if i == len(parts) - 1:
            setattr(obj, part, _coerce(value, types_[part], key, where))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{where}: '{'.'.join(parts[: i + 1])}' is not a section")


def apply_override(cfg: Any, assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML (so 3, true, [a,b])."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}': expected key=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    _assign(cfg, key.strip(), value, "override")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                flags: dict[str, Any] | None = None) -> T:
    """Defaults ← YAML file ← flags (`flag_values(args)`) ← overrides. Raises ConfigError with the file/key
    and reason."""
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
    for key, value in (flags or {}).items():
        _assign(cfg, key, value, "--" + key.rpartition(".")[2].replace("_", "-"))
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


def _class_source(cls: type) -> str:
    """The source of `cls`, cut from its module's lines. inspect.getsource parses the whole module to find a
    class, about 10 ms for a CLI module, and a verb's parser reads its config class on every start."""
    import inspect
    import linecache
    import re

    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    lines = linecache.getlines(file) if file else []
    head = re.compile(rf"(\s*)class\s+{cls.__name__}\b")
    starts = [(i, m) for i, line in enumerate(lines) if (m := head.match(line))]
    if len(starts) != 1:  # none, or several classes of that name: let inspect tell them apart
        return inspect.getsource(cls)
    start, m = starts[0]
    indent, end = len(m.group(1)), start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and not line.lstrip().startswith("#") and len(line) - len(line.lstrip()) <= indent:
            break
        end += 1
    return "".join(lines[start:end])


@functools.cache  # a verb's parser asks twice per class (its flags' help and config_help)
def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the dataclass source: the comment lines above it and the one after it. Read
    with ast and the field's end column, not tokenize: tokenize's first use compiles its patterns (≈10 ms,
    on every start of a verb whose flags are made from its config)."""
    import ast
    import textwrap

    src = _class_source(cls)
    if src[:1].isspace():  # a class defined inside a function or class
        src = textwrap.dedent(src)
    lines = src.splitlines()

    def comment(line: str) -> str | None:
        text = line.strip()
        return text.lstrip("#").strip() if text.startswith("#") else None

    out = {}
    for node in ast.parse(src).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, n = [], node.lineno - 2  # the line above the field, 0-based
            while n >= 0 and (text := comment(lines[n])) is not None:
                above.insert(0, text)
                n -= 1
            # ast columns count UTF-8 bytes: what follows the field's code on its last line
            rest = lines[node.end_lineno - 1].encode()[node.end_col_offset:].decode()
            trailing = comment(rest)
            out[node.target.id] = " ".join(above + ([trailing] if trailing is not None else []))
    return out


def _show(v: Any) -> str:
    text = "[" + ", ".join(map(str, v)) + "]" if isinstance(v, list) else ('""' if v == "" else str(v))
    return text if len(text) <= 40 else text[:37] + "..."


def config_help(cfg: Any, width: int = 100, flags: dict[str, str] | None = None,
                include: tuple[str, ...] | None = None) -> str:
    """A verb's `--help` list of config keys: each key of the `cfg` dataclass (nested ones dotted), its default
    and the comment written beside it in the source — so a field's comment is its documentation. `flags`
    ({key: flag}, what `add_config_flags` returns): those keys are listed by name, their comment being the
    flag's help. `include`: only these keys and sections (e.g. ("db", "create.")).
    """
    import textwrap

    flags = flags or {}
    lines = ["config keys (in the --config YAML, or key=value after the options; default after =):"]
    flagged: list[str] = []

    def walk(obj, prefix: str) -> None:
        notes = field_comments(type(obj))
        for f in dataclasses.fields(obj):
            key, value = prefix + f.name, getattr(obj, f.name)
            if include is not None and not any(key == k or (k.endswith(".") and key.startswith(k))
                                               or k.startswith(key + ".") for k in include):
                continue
            if dataclasses.is_dataclass(value):
                walk(value, f"{key}.")
                continue
            if key in flags:
                flagged.append(key)
                continue
            text = f"  {key} = {_show(value)}" + (f"  — {notes[f.name]}" if notes.get(f.name) else "")
            lines.extend(textwrap.wrap(text, width, subsequent_indent=" " * 6, break_on_hyphens=False))

    walk(cfg, "")
    if flagged:
        lines.extend(textwrap.wrap(
            f"  the flags above, as keys (_ for -; --no-x is x=false): {', '.join(flagged)}",
            width, subsequent_indent=" " * 6, break_on_hyphens=False))
        lines.append("precedence, later wins: defaults ← --config YAML ← flags ← key=value overrides")
    return "\n".join(lines)


FLAG_DEST = "config:"  # argparse dest prefix of the flags made from config fields (flag_values collects them)


def add_config_flags(parser: Any, cls: type, section: str = "",
                     flags: dict[str, dict | None] | None = None) -> dict[str, str]:
    """One command-line flag per field of the dataclass `cls`, with the field's comment as its help, so a
    verb's flags and its config keys are written once: `max_new_tokens` → `--max-new-tokens N`, a bool that
    defaults to false → `--with-findings`, one that defaults to true → `--no-repair`, a Literal → its
    choices, a list → a repeatable flag. `flags` adjusts single fields with argparse keywords (metavar, nargs,
    action, choices, help) plus `names` (the spellings, e.g. ["--predictions", "--pred"]); None gives a field
    no flag (YAML or key=value only). Nested dataclass fields are sections: call again with their class and
    `section="create."`. A flag that is not given leaves nothing behind (argparse.SUPPRESS), so a flag's
    default never hides the YAML's value. Returns {config key: flag} for `config_help`.

    The help is written when --help is printed, not when the parser is built (reading the comments from the
    source is work a plain run does not need): the parser gets a formatter that asks each flag for its help
    then, and takes an epilog that is a function (`parser.epilog = lambda: config_help(...)`)."""
    import argparse

    flags = flags or {}
    types_ = _field_types(cls)
    unknown = set(flags) - set(types_)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    parser.formatter_class = _formatter_class()
    defaults, made = cls(), {}
    for name, tp in types_.items():
        spec = flags.get(name, {})
        if spec is None or dataclasses.is_dataclass(tp):
            continue
        spec = dict(spec)
        default = getattr(defaults, name)
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):  # X | None: the flag takes an X
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
            origin = typing.get_origin(tp)
        dashed = name.replace("_", "-")
        kw: dict[str, Any] = {"dest": FLAG_DEST + section + name, "default": argparse.SUPPRESS}
        if tp is bool:
            names = [f"--no-{dashed}"] if default else [f"--{dashed}"]
            kw["action"] = "store_false" if default else "store_true"
        else:
            names = [f"--{dashed}"]
            if origin is typing.Literal:
                kw["choices"] = list(typing.get_args(tp))
            elif origin in (list, tuple):
                kw["action"] = "append"
                inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
                if inner in (int, float):
                    kw["type"] = inner
            elif tp in (int, float):
                kw["type"] = tp
        names = spec.pop("names", names)
        given = spec.pop("help", None)
        shown = "" if tp is bool or default in (None, "", []) else \
            f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
        kw.update(spec)
        if kw.get("action") not in ("store_true", "store_false") and "choices" not in kw:
            kw.setdefault("metavar", name.upper())
        # argparse shows a help only when it is not empty: the placeholder stands for the text written later
        action = parser.add_argument(*names, help="(config key)", **kw)
        action.lazy_help = functools.partial(_flag_help, cls, name, names[0], given, shown)
        made[section + name] = names[0]
    return made


def _flag_help(cls: type, name: str, flag: str, given: str | None, shown_default: str) -> str:
    text = given or field_comments(cls).get(name, "")
    text = text.removeprefix(f"false ({flag}): ")  # the comment of a true-by-default bool names its flag
    return (text + shown_default).replace("%", "%%")  # argparse %-formats a help


@functools.cache
def _formatter_class() -> type:
    """RawDescriptionHelpFormatter writing config flags' help and a function epilog when help is printed."""
    import argparse

    class ConfigHelpFormatter(argparse.RawDescriptionHelpFormatter):
        def _get_help_string(self, action):  # the hook argparse's own ArgumentDefaultsHelpFormatter uses
            lazy = getattr(action, "lazy_help", None)
            return lazy() if lazy is not None else action.help

        def add_text(self, text):
            super().add_text(text() if callable(text) else text)

    return ConfigHelpFormatter


def flag_values(args: Any) -> dict[str, Any]:
    """The config flags given on the command line, as {dotted key: value}, for load_config(flags=...)."""
    return {k[len(FLAG_DEST):]: v for k, v in vars(args).items() if k.startswith(FLAG_DEST)}


def names_config_key(cls: type, item: str) -> bool:
    """Whether `item` is `key=value` with a key of `cls` or one under its sections (a typo in a section's key
    counts, so it gets the unknown-key error with suggestions rather than being read as something else)."""
    key, sep, _ = item.partition("=")
    if not sep:
        return False
    keys = _all_keys(cls)
    return key in keys or any(key.startswith(k + ".") for k in keys)


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # a text longer than a file name can be (ENAMETOOLONG) names no file
        return False


def split_overrides(items: list[str], cls: type) -> tuple[list[str], list[str]]:
    """Positional inputs and key=value overrides share a verb's command line: (inputs, overrides). An item is
    an override when it starts with a lower-case dotted name and '=' and is not an existing path, and either
    names a config key or holds no white space — so a findings text such as "LVEF=55%. Lungs clear." stays
    text, and `shot=3` is a typo reported with its close match."""
    import re

    inputs, overrides = [], []
    for item in items:
        looks = re.match(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*=", item) is not None and not _exists(item)
        is_override = looks and (names_config_key(cls, item) or not any(c.isspace() for c in item))
        (overrides if is_override else inputs).append(item)
    return inputs, overrides
