"""Executed notebooks as HTML that works offline: no script loaded from a CDN, figures embedded,
ipywidgets shown as the static snapshot of their saved state.

nbconvert's ``lab`` template loads RequireJS and MathJax from a CDN on every page and, when the
notebook saved widget state, the ipywidgets HTML manager too; opened without network those
pages log errors and the widgets stay blank. The study notebooks contain no TeX and need no
JavaScript, so the template here drops those scripts (TeX would show as written), and every widget view becomes plain HTML
built from the widget state papermill saved with the notebook (nbclient's
``store_widget_state``): boxes as flex rows/columns, images as embedded PNGs, HTML and labels
as they were, buttons and sliders as disabled controls. Paging needs a kernel either way: the
executed ``.ipynb`` keeps its widget state, so JupyterLab shows the saved widgets on reopening.
"""
from __future__ import annotations

import copy
import html
import re
from pathlib import Path
from typing import Any

__all__ = ["OFFLINE_TEMPLATE", "external_resources", "notebook_html", "static_widget_html"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# the lab template without the scripts it would fetch from a CDN (RequireJS, MathJax, the widget
# manager, mermaid): the study notebooks have no TeX, no diagrams and their widgets become HTML
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""
_REF = "IPY_MODEL_"
# what a browser would fetch from the network: script/img/iframe sources, stylesheet links, imports
_FETCHED = re.compile(r"<(?:script|img|iframe|source|link)\b[^>]*?\b(?:src|href)\s*=\s*[\"']?((?:https?:)?//[^\"'\s>]+)"
                      r"|\bimport\s*\(\s*[\"']((?:https?:)?//[^\"']+)|@import\s+(?:url\()?[\"']?((?:https?:)?//[^\"')\s]+)",
                      re.IGNORECASE)


def _model(state: dict[str, Any], ref: str) -> dict[str, Any]:
    return state.get(ref[len(_REF):] if ref.startswith(_REF) else ref, {})


def _image_src(model: dict[str, Any]) -> str:
    """An Image widget's bytes as a data URL (papermill saves them base64 in the state's buffers)."""
    fmt = model.get("state", {}).get("format", "png")
    for buf in model.get("buffers", []):
        if buf.get("path") == ["value"] and buf.get("encoding") == "base64":
            return f"data:image/{html.escape(fmt)};base64,{buf['data']}"
    return ""


def static_widget_html(ref: str, state: dict[str, Any]) -> str:
    """The saved state of widget ``ref`` (a model id) and its children as static HTML."""
    model = _model(state, ref)
    name, s = model.get("model_name", ""), model.get("state", {})
    if name in ("VBoxModel", "HBoxModel", "BoxModel", "GridBoxModel"):
        direction = "row" if name == "HBoxModel" else "column"
        kids = "".join(static_widget_html(child, state) for child in s.get("children", []))
        return f"<div style='display:flex;flex-direction:{direction};gap:6px;align-items:flex-start'>{kids}</div>"
    if name == "ImageModel":
        width = _model(state, s.get("layout", "")).get("state", {}).get("max_width") or "100%"
        return f"<img src='{_image_src(model)}' style='max-width:{html.escape(width)}' alt='widget image'>"
    if name in ("HTMLModel", "HTMLMathModel"):
        return f"<div>{s.get('value', '')}</div>"  # the notebook's own HTML, as Jupyter shows it
    if name == "LabelModel":
        return f"<span>{html.escape(str(s.get('value', '')))}</span>"
    if name == "ButtonModel":
        return f"<button disabled>{html.escape(str(s.get('description', '')))}</button>"
    if name in ("IntSliderModel", "FloatSliderModel"):
        return (f"<label>{html.escape(str(s.get('description', '')))} <input type='range' disabled "
                f"min='{s.get('min', 0)}' max='{s.get('max', 100)}' value='{s.get('value', 0)}'> "
                f"{html.escape(str(s.get('value', '')))} / {html.escape(str(s.get('max', '')))}</label>")
    return f"<span>[{html.escape(name or 'widget')} without a static view]</span>"


def _static_widgets(nb: Any) -> Any:
    """A copy of ``nb`` whose widget views are text/html snapshots and which holds no widget state."""
    nb = copy.deepcopy(nb)
    saved = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                continue
            snapshot = static_widget_html(view["model_id"], saved) if view.get("model_id") in saved else ""
            note = ("<p><small>Widgets as saved when the notebook ran (static: page through them in "
                    "JupyterLab).</small></p>" if snapshot else "")
            out["data"] = {"text/html": note + snapshot if snapshot else
                           "<p><small>(an interactive widget: run the notebook in JupyterLab)</small></p>"}
    return nb


def external_resources(page: str) -> list[str]:
    """The network addresses an HTML page would load (empty: it works offline). Plain links
    (``<a href>``) and addresses in comments or text are not loaded, so not listed."""
    return [next(g for g in m.groups() if g) for m in _FETCHED.finditer(page)]


def notebook_html(executed: str | Path) -> str:
    """The executed notebook as one self-contained HTML page (no network needed to view it)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = _static_widgets(nbformat.read(str(executed), as_version=4))
    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2",
                            extra_loaders=[DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})])
    body, _ = exporter.from_notebook_node(nb)
    return body
