"""Run-name and layout templates: ``"{model}_{wd}_bs{batch_size}_seed{seed}"`` filled from a run's fields.

A field is a factor name, a factor alias (last part of a dotted key), a built-in (seed, index, model,
family, dataset, resolution, ...) or any dotted path into the run's config (``{optim.lr}``). An optional
format spec works as in ``str.format`` (``{index:04d}``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from cnnlab.engine.config import ConfigError

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?::([^{}]*))?\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order."""
    return [m.group(1) for m in _FIELD.finditer(template)]


def short_value(value: Any) -> str:
    """A compact, path-safe text for a factor value without a label (0.0005 -> "0.0005", True -> "true")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        value = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def safe_part(text: str) -> str:
    """Replace characters that do not belong in a file name by '-'."""
    return _UNSAFE.sub("-", text).strip("-") or "-"


def lookup(fields: Mapping[str, Any], config: Mapping[str, Any], name: str) -> Any:
    """A field's value: from ``fields`` first, else a dotted path into the config dict; KeyError if neither."""
    if name in fields:
        return fields[name]
    cur: Any = config
    for part in name.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(name)
        cur = cur[part]
    return cur


def render(template: str, fields: Mapping[str, Any], config: Mapping[str, Any], *, what: str) -> str:
    """Fill ``template``; each value is made path-safe. ``what`` names the template in errors."""

    def sub(m: re.Match) -> str:
        name, spec = m.group(1), m.group(2)
        try:
            value = lookup(fields, config, name)
        except KeyError:
            raise ConfigError(
                f"{what}: unknown field {{{name}}}; available: {', '.join(sorted(fields))} "
                f"or a dotted config key such as {{optim.lr}}") from None
        if spec:
            try:
                text = format(value, spec)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{what}: cannot format {{{name}:{spec}}} with value {value!r}: {e}") from None
        else:
            text = value if isinstance(value, str) else short_value(value)
        return safe_part(text)

    if template.count("{") != template.count("}"):
        raise ConfigError(f"{what}: unbalanced braces in {template!r}")
    return _FIELD.sub(sub, template)
