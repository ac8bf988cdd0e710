"""The configuration reference, generated from `Settings` so it cannot drift from the code:
`reco config-doc > docs/configuration.md` (a test compares the two)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_origin

from pydantic import BaseModel, TypeAdapter

from backend.core.settings import Settings

HEADER = """# Configuration reference

Generated from `backend/core/settings.py` by `reco config-doc`; do not edit by hand (a test checks
that this file matches the code). Every setting is an environment variable with the `RECO_`
prefix; nested sections use `__` (for example `RECO_KAFKA__PARTITIONS=6`). Secrets (API
keys, SASL passwords) are never given here in clear: API keys are configured by their SHA-256
digest, the Kafka password is a secret string read from the environment.
"""


def _type(annotation: Any) -> str:
    text = str(annotation) if get_origin(annotation) else annotation.__name__
    for noise in ("typing.", "pathlib.", "pydantic.types.", "backend.core.settings."):
        text = text.replace(noise, "")
    return text


def _default(field: Any) -> str:
    if field.default_factory is not None:  # as the JSON a RECO_ variable would hold
        value = TypeAdapter(Any).dump_json(field.default_factory()).decode()
        return "`" + value + "`"
    value = field.default
    if isinstance(value, Path):
        return f"`{value}`"
    return "(unset)" if value is None else f"`{value!r}`"


def rows(model: type[BaseModel], prefix: str = "RECO_") -> list[tuple[str, str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += rows(ann, f"{prefix}{name.upper()}__")
            continue
        doc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        out.append((f"{prefix}{name.upper()}", _type(ann).replace("|", "\\|"), _default(field),
                    doc))
    return out


def render() -> str:
    lines = [HEADER]
    section = None
    for var, typ, default, doc in rows(Settings):
        head = var.split("__")[0] if "__" in var else "RECO_"
        if head != section:
            section = head
            title = head.removeprefix("RECO_").lower() or "top level"
            model = Settings.model_fields.get(title)
            about = (model.annotation.__doc__ or "").strip() if model else ""
            lines += ["", f"## {title}", ""]
            if about:
                lines += [" ".join(about.split()), ""]
            lines += ["| variable | type | default | meaning |", "|---|---|---|---|"]
        lines.append(f"| `{var}` | {typ} | {default} | {doc} |")
    return "\n".join(lines) + "\n"
