"""JSON Schema for mapping files and ``routes.yaml``, generated from the Pydantic models.

Published two ways: ``GET /v1/schema/{mapping,routes}`` (JSON) and, for editors working in
a checkout, ``mappings/schema/*.schema.yaml`` (YAML, since ``mappings/`` holds YAML only;
a YAML file is also valid input to the YAML language server's ``$schema`` comment). A test
checks the committed files equal what the models generate: run
``hitl-bridge mappings schema --write`` after changing a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .mapping import Mapping
from .routing import RoutesFile

KINDS = {"mapping": Mapping, "routes": RoutesFile}
HEADER = "# Generated from the Pydantic models by `hitl-bridge mappings schema --write`; do not edit.\n"


def schema(kind: str) -> dict[str, Any]:
    model = KINDS[kind]
    generated = model.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:hitl-bridge:schema:{kind}",
        **generated,
        "title": "hitl-bridge mapping file" if kind == "mapping" else "hitl-bridge routes.yaml",
    }


def as_yaml(kind: str) -> str:
    return HEADER + yaml.safe_dump(schema(kind), sort_keys=False, allow_unicode=True, width=100)


def write(directory: Path) -> list[Path]:
    target = directory / "schema"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = target / f"{kind}.schema.yaml"
        path.write_text(as_yaml(kind))
        written.append(path)
    return written
