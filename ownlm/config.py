"""Config loader: YAML file + `--set a.b=value` overrides, validated against a pydantic class.

Every config class in ownlm derives from `Config` (extra keys forbidden, frozen). An unknown key
is reported with the file, the dotted key and the closest known key.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ownlm.errors import ConfigError


class Config(BaseModel):
    """Base of all ownlm config classes: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    # old key -> its new name (a key of this class: "max_steps was renamed steps"), or a sentence
    # saying what replaced it; named in the error when a config still uses the old key
    renamed_keys: ClassVar[dict[str, str]] = {}


C = TypeVar("C", bound=Config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (['a', 'b'], value), the value parsed as YAML (so 3 is an int)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' has no '='; write it as key=value, e.g. lr=1e-5")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err})") from err
    return key.strip().split("."), value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside `X`, `X | None`, `list[X]`, `dict[str, X]` or a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def kind_of(model: type[BaseModel]) -> str | None:
    """The tag of a tagged-union member: its `kind` field's default or single Literal value."""
    field = model.model_fields.get("kind")
    if field is None:
        return None
    if isinstance(field.default, str):
        return field.default
    values = typing.get_args(field.annotation)
    return str(values[0]) if typing.get_origin(field.annotation) is Literal and values else None


def _container_depth(annotation: Any) -> int:
    """How many list indices and dict keys stand between a field and its models in a loc:
    `dict[str, ModelConfig]` 1, `list[Policy]` 1, `LoraSpec | None` 0."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _container_depth(args[0])
    if origin in (Union, types.UnionType):
        return max((_container_depth(a) for a in args if models_in(a)), default=0)
    if origin in (list, tuple, set, frozenset, dict):
        return 1 + (_container_depth(args[-1]) if args else 0)
    return 0


def _closest_key(
    cls: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[str, list[str], list[str], type[BaseModel] | None]:
    """Walk the model along loc and return (bad key, known keys at that level, the path as the
    user wrote it, the model at that level). In a tagged union, pydantic puts the tag (the
    `kind`) in loc after the list index or dict key; the path leaves it out."""
    model: type[BaseModel] = cls
    parts = list(loc[:-1])
    path: list[str] = []
    while parts:
        part = parts.pop(0)
        path.append(str(part))
        field = model.model_fields.get(part) if isinstance(part, str) else None
        inner = models_in(field.annotation) if field is not None else []
        if field is None or not inner:
            return str(loc[-1]), [], path + [str(p) for p in parts], None
        for _ in range(_container_depth(field.annotation)):
            if parts:
                path.append(str(parts.pop(0)))
        model = inner[0]
        tagged = [m for m in inner if parts and len(inner) > 1 and kind_of(m) == parts[0]]
        if tagged:
            model = tagged[0]
            parts.pop(0)
    return str(loc[-1]), list(model.model_fields), path, model


def validate_config(cls: type[C], data: dict[str, Any], source: str) -> C:
    """Validate a plain dict against cls; the error names source, the key and a suggestion."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = tuple(e["loc"])
            dotted = ".".join(str(p) for p in loc)
            if e["type"] == "extra_forbidden":
                bad, known, path, model = _closest_key(cls, loc)
                near = difflib.get_close_matches(bad, known, n=1)
                renamed = getattr(model, "renamed_keys", {}).get(bad)
                if renamed in known:
                    renamed = f"{bad} was renamed {renamed}; write {renamed} instead"
                hint = (
                    f"; {renamed}"
                    if renamed
                    else f"; did you mean '{near[0]}'?"
                    if near
                    else f"; known keys: {', '.join(known)}"
                )
                where = f" in {'.'.join(path)}" if path else ""
                lines.append(f"{source}: unknown key '{bad}'{where}{hint}")
            else:
                lines.append(f"{source}: {dotted}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] = ()) -> C:  # type: ignore[assignment]
    """Read YAML at path (optional), apply overrides, validate against cls."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = p.name
        try:
            text = p.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config file {p}: {err.strerror}") from err
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{p}: the top level must be a mapping of keys, got {type(loaded).__name__}"
            )
        data = loaded
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(data, keys, value)
        source = source if path is not None else "--set"
    return validate_config(cls, data, source)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (the run directory keeps it before step 0)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
