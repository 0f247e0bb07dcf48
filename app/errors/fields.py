"""Validation errors as one (field, text) pair per bad field: the FIELD_ERROR messages of a 412,
and the error of a dead submission (SPEC 10.2), from one place."""

from __future__ import annotations


def flatten(errors, prefix: str = "") -> list[tuple[str | None, str]]:
    """marshmallow/webargs errors ({field: [msg] | {nested}}) as (field name, "path: texts") pairs."""
    found: list[tuple[str | None, str]] = []
    if isinstance(errors, dict):
        for key, value in errors.items():
            name: str | None = f"{prefix}.{key}" if prefix and key != "_schema" else (prefix or str(key))
            if key == "_schema":
                name = prefix or None
            if isinstance(value, (dict, list)) and not _is_message_list(value):
                found.extend(flatten(value, name or ""))
            else:
                texts = "; ".join(str(t) for t in (value if isinstance(value, list) else [value]))
                # "state.0" names the list "state" (the message keeps the position).
                field_name = ".".join(p for p in name.split(".") if not p.isdigit()) if name else None
                found.append((field_name, f"{name}: {texts}" if name else texts))
    elif isinstance(errors, list):
        found.append((prefix or None, "; ".join(str(e) for e in errors)))
    return found


def _is_message_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
