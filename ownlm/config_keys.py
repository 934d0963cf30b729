"""Every key of a config class for `ownlm <command> --help`: dotted name, type, default, meaning.

    print(format_config_keys(SFTConfig))

Read from the classes themselves (pydantic `model_fields`, `Field(description=...)`), so the help
cannot drift from what the loader accepts. Nested sections get dotted names (`lora.r`); a tagged
union lists each kind (`env`, kind prompt_set); a dict of named entries shows `<name>`
(`models.<name>.upstream`); a dict default's items are keys too (`env.task_kwargs.max_terms`);
a dict that another stage validates later (the loop's `sft`) names that stage's class in
`section_field` and is listed with its keys.
"""

from __future__ import annotations

import importlib
import json
import shutil
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from ownlm.config import kind_of, models_in

MAX_DEFAULT_CHARS = 40
MAX_DEPTH = 6


@dataclass(frozen=True)
class KeyDoc:
    """One settable key: `env.task_kwargs.max_terms`, `int`, `2` (None: required), its
    description ('' when the field has none)."""

    key: str
    type: str
    default: str | None
    description: str


@dataclass(frozen=True)
class Section:
    """The keys of one config class at one place in the tree, under a title."""

    title: str
    keys: list[KeyDoc]
    same_as: str = ""  # a class listed before: its keys are those under this prefix


def section_field(fields_of: str, *, set_elsewhere: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A `dict` field holding another config class's fields ("module:Class"), validated later by
    the code that fills in `set_elsewhere`; --help lists that class's keys under the field."""
    extra = {"fields_of": fields_of, "set_elsewhere": list(set_elsewhere)}
    return Field(json_schema_extra=extra, **kwargs)


def _element_path(annotation: Any) -> str:
    """How the entries of a container are named in a dotted key: `[]` in a list, `.<name>` in a
    dict (`models.<name>.upstream`), nothing for a plain section."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _element_path(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if models_in(arg):
                return _element_path(arg)
        return ""
    if origin in (list, tuple, set, frozenset):
        return "[]"
    if origin is dict:
        return ".<name>"
    return ""


def type_name(annotation: Any) -> str:
    """A short, YAML-minded name for a field's type: `int | null`, `{constant,cosine}`."""
    if annotation is type(None) or annotation is None:
        return "null"
    if annotation is Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin in (list, tuple, set, frozenset):
        inner = [type_name(a) for a in args if a is not Ellipsis]
        return f"list[{inner[0]}]" if inner else "list"
    if origin is dict:
        return f"dict[{', '.join(type_name(a) for a in args)}]" if args else "dict"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def default_text(value: Any) -> str:
    """A default as the user would write it in YAML, abbreviated past MAX_DEFAULT_CHARS."""
    value = _plain(value)
    if isinstance(value, str):
        text = value if value.strip() == value and value.isprintable() else json.dumps(value)
        text = text or '""'
    elif isinstance(value, (dict, list, tuple, bool)) or value is None:
        try:
            text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6)
        except yaml.YAMLError:
            text = repr(value)
        text = text.strip().removesuffix("...").strip()
    else:
        text = str(value)
    if len(text) > MAX_DEFAULT_CHARS:
        text = text[: MAX_DEFAULT_CHARS - 3] + "..."
    return text


_REQUIRED = object()


def _default_of(field: FieldInfo) -> Any:
    if field.is_required():
        return _REQUIRED
    try:
        return field.get_default(call_default_factory=True, validated_data={})
    except (KeyError, TypeError, ValueError):
        return _REQUIRED  # a factory that needs the other fields: no fixed default to show


def _fields_of(field: FieldInfo) -> tuple[type[BaseModel], tuple[str, ...]] | None:
    extra = field.json_schema_extra
    if not isinstance(extra, dict) or not isinstance(extra.get("fields_of"), str):
        return None
    module, _, name = str(extra["fields_of"]).partition(":")
    cls = getattr(importlib.import_module(module), name)
    omit = extra.get("set_elsewhere") or []
    return cls, tuple(str(k) for k in omit) if isinstance(omit, list) else ()


def _description(model: type[BaseModel], name: str) -> str:
    """The field's description; an override that only changes a default keeps its parent's."""
    for cls in model.__mro__:
        fields = getattr(cls, "model_fields", None) if isinstance(cls, type) else None
        field = fields.get(name) if isinstance(fields, dict) else None
        if field is not None and field.description:
            return field.description
    return ""


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ") if doc else ""


def describe_config(cls: type[BaseModel]) -> list[Section]:
    """The keys of cls and of every section nested in it, parents before children."""
    sections: list[Section] = []
    _walk(cls, None, "", cls.__name__, _summary(cls), (), sections, {}, 0)
    return sections


def _walk(
    model: type[BaseModel],
    instance: BaseModel | None,
    prefix: str,
    label: str,
    summary: str,
    omit: tuple[str, ...],
    sections: list[Section],
    seen: dict[type[BaseModel], tuple[str, BaseModel | None]],
    depth: int,
) -> None:
    """Add the section of model at prefix; instance, when the parent's default is one, gives
    the defaults (`own_engine.kind` is llama_cpp, not UpstreamConfig's openai)."""
    first = seen.get(model)
    if first is not None and first[1] == instance and not omit:
        sections.append(Section(f"{label}: the keys of {first[0]} above", [], first[0]))
        return
    title = f"{label}: {summary}" if summary else label
    seen.setdefault(model, (prefix.removesuffix("."), instance))
    rows: list[KeyDoc] = []
    sections.append(Section(title, rows))
    children: list[tuple[type[BaseModel], BaseModel | None, str, str, str, tuple[str, ...]]] = []
    for name, field in model.model_fields.items():
        if name in omit:
            continue
        key = prefix + name
        default = getattr(instance, name) if instance is not None else _default_of(field)
        shown = None if default is _REQUIRED else default_text(default)
        rows.append(KeyDoc(key, type_name(field.annotation), shown, _description(model, name)))
        models = models_in(field.annotation)
        if isinstance(default, dict) and default and not models:
            for k, v in default.items():
                rows.append(KeyDoc(f"{key}.{k}", type_name(type(v)), default_text(v), ""))
        inner = _fields_of(field)
        if inner is not None:
            cls, skip = inner
            note = f"; set elsewhere: {', '.join(skip)}" if skip else ""
            children.append((cls, None, f"{key}.", key, f"{cls.__name__} keys{note}", skip))
        where = key + _element_path(field.annotation)
        for m in models:
            kind = kind_of(m)
            tag = f", kind {kind}" if len(models) > 1 and kind is not None else ""
            own = default if type(default) is m else None
            children.append((m, own, f"{where}.", f"{where}{tag}", _summary(m), ()))
    if depth < MAX_DEPTH:
        for child in children:
            _walk(*child, sections=sections, seen=seen, depth=depth + 1)


def format_config_keys(cls: type[BaseModel], width: int | None = None) -> str:
    """The --help text listing every key of cls, grouped by section, wrapped at width."""
    if width is None:
        width = min(max(shutil.get_terminal_size().columns - 2, 60), 100)
    sections = describe_config(cls)
    intro = "config keys (in the --config YAML file, or --set KEY=VALUE; dotted keys are nested)"
    if any("<name>" in s.title or "[]" in s.title for s in sections):
        intro += "; <name>: any entry of a mapping; []: every entry of a list, set as a whole"
    out = textwrap.wrap(intro + ":", width)
    for section in sections:
        if not section.keys and not section.same_as:
            continue
        out.append("")
        out.extend(textwrap.wrap(section.title, width, subsequent_indent="    "))
        for k in section.keys:
            default = " (required)" if k.default is None else f" = {k.default}"
            head = f"{k.key}  {k.type}{default}"
            out.extend(textwrap.wrap(head, width, initial_indent="  ", subsequent_indent="      "))
            indent = " " * 6
            out.extend(
                textwrap.wrap(k.description, width, initial_indent=indent, subsequent_indent=indent)
            )
    return "\n".join(out) + "\n"
