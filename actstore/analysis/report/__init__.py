"""``actstore.analysis.report``: the self-contained HTML report of a finished analysis
(``render``; jinja2 templates in ``templates/``, shipped as package data)."""

from .render import render

__all__ = ["render"]
