"""Sphinx configuration of the xarray-modelfit documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (``-W``: warnings are errors).
"""

from __future__ import annotations

import xarray_modelfit

project = "xarray-modelfit"
author = "xarray-modelfit contributors"
copyright = "xarray-modelfit contributors"
release = version = xarray_modelfit.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = False  # the API page documents everything itself: no stub files
autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False

nitpicky = False

html_theme = "furo"
html_title = f"xarray-modelfit {release}"


# --------------------------------------------------------------------------------------
# ``{status-table}``: the fit_status codes, rendered from xarray_modelfit.kernel.status
# so the page can never disagree with the code.


def _status_table_directive():
    from docutils import nodes
    from docutils.parsers.rst import Directive

    def cell(text: str, literal: bool = False):
        entry = nodes.entry()
        para = nodes.paragraph()
        para += nodes.literal(text=text) if literal else nodes.Text(text)
        entry += para
        return entry

    class StatusTable(Directive):
        has_content = False

        def run(self):
            from xarray_modelfit.kernel.status import FIRST_FAILURE, STATUS_TABLE

            header = ["code", "Status", "flag meaning", "parameters", "meaning"]
            table = nodes.table(classes=["status-table"])
            group = nodes.tgroup(cols=len(header))
            table += group
            for width in (6, 22, 24, 10, 50):
                group += nodes.colspec(colwidth=width)
            head = nodes.thead()
            row = nodes.row()
            for text in header:
                row += cell(text)
            head += row
            group += head
            body = nodes.tbody()
            for status, (flag, sentence) in STATUS_TABLE.items():
                row = nodes.row()
                row += cell(str(int(status)))
                row += cell(f"Status.{status.name}", literal=True)
                row += cell(flag, literal=True)
                row += cell("fitted" if status < FIRST_FAILURE else "NaN")
                row += cell(sentence[0].upper() + sentence[1:] + ".")
                body += row
            group += body
            return [table]

    return StatusTable


def setup(app):
    app.add_directive("status-table", _status_table_directive())
    return {"parallel_read_safe": True}
