"""The documentation site's API reference (docs/api/*.md, built by mkdocs + mkdocstrings) lists every public name.

A name exported by ``sb3_flow``, ``sb3_flow.policies`` or ``sb3_flow.wrappers`` (their ``__all__``) must have a
``::: path`` entry whose path ends in that name and imports the same object, or be a member of a module that has an
entry of its own (``::: sb3_flow.common.ogbench`` documents the module's public functions). A public class added
without a docs entry fails here; ``mkdocs build --strict`` in .ci/run then checks that every entry renders.
"""

import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import sb3_flow
import sb3_flow.policies
import sb3_flow.wrappers

API_DIR = Path(__file__).resolve().parent.parent / "docs" / "api"
ENTRY = re.compile(r"^:::\s+(?P<path>[\w.]+)\s*$", re.MULTILINE)
MISSING = object()


def documented_paths() -> list[str]:
    pages = sorted(API_DIR.glob("*.md"))
    assert pages, f"no API reference pages in {API_DIR}"
    return [match["path"] for page in pages for match in ENTRY.finditer(page.read_text(encoding="utf-8"))]


def import_path(path: str) -> Any:
    """The object a mkdocstrings identifier names: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute, MISSING)
            if obj is MISSING:
                return MISSING
        return obj
    return MISSING


def public_names() -> list[tuple[str, str]]:
    return [(module.__name__, name) for module in (sb3_flow, sb3_flow.policies, sb3_flow.wrappers) for name in module.__all__]


def test_every_api_entry_imports():
    unresolved = [path for path in documented_paths() if import_path(path) is MISSING]
    assert not unresolved, f"docs/api entries that do not import: {unresolved}"


@pytest.mark.parametrize(("module_name", "name"), public_names())
def test_every_public_name_has_an_api_entry(module_name, name):
    exported = getattr(importlib.import_module(module_name), name)
    entries = {path: import_path(path) for path in documented_paths()}
    by_name = [path for path, obj in entries.items() if path.rsplit(".", 1)[-1] == name and obj is exported]
    in_module = [
        path
        for path, obj in entries.items()
        if isinstance(obj, ModuleType) and not name.startswith("_") and getattr(obj, name, MISSING) is exported
    ]
    assert by_name or in_module, (
        f"{module_name}.{name} is public (in __all__) but has no entry in the API reference: add "
        f"'::: {module_name}.{name}' to the right page in docs/api/"
    )
