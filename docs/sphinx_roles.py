"""A griffe extension for the API reference: the docstrings' Sphinx roles as code spans.

actstore's docstrings name other objects the Sphinx way (``:func:`open```,
``:class:`~actstore.models.Intervention```); Markdown has no roles, so they would show as
literal ``:func:`` text. This rewrites each role to a plain code span (``~`` keeps the last
dotted name, as in Sphinx). It only changes how the docstrings render; mkdocs.yml loads it.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _span(match: re.Match) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_span, obj.docstring.value)
