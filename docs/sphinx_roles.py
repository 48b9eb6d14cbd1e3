"""Griffe extension for the documentation site (mkdocs.yml, mkdocstrings): Sphinx roles in the docstrings become links.

sb3-flow's docstrings use Sphinx's ``:class:`~sb3_flow.Demonstrations``` and ``:meth:`sample``` roles, which Markdown
would print as they are. Each role becomes an optional cross-reference: a link where the target has an entry in the API
reference, plain code otherwise (an optional reference never fails the strict build). A short name is looked up from
the object whose docstring holds it, as Python would (its members, its module's imports, its parents).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc|const):`(?P<tilde>~?)(?P<target>[^`<>]+)`")


def resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``; ``target`` itself when it does not resolve."""
    if target.startswith("sb3_flow.") or ("." in target and not target[0].isupper()):
        return target
    head, _, rest = target.partition(".")
    scope: Any = obj
    while scope is not None:
        try:
            path = scope.resolve(head)
        except (griffe.NameResolutionError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            scope = scope.parent
            continue
        return f"{path}.{rest}" if rest else path
    return target


def rewrite(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match[str]) -> str:
        target = match["target"].strip().removesuffix("()")
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
        identifier = html.escape(resolve(obj, target), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{html.escape(title)}</code></autoref>'

    return ROLE.sub(link, text)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles in every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = rewrite(obj, obj.docstring.value)
                obj.docstring.__dict__.pop("parsed", None)  # a cached parse of the old text
            stack.extend(member for member in obj.members.values() if not member.is_alias)
