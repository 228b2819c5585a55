"""Execute the study notebooks with papermill: executed copies go under outputs/, never over the source."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from workbench.core.paths import NOTEBOOKS_DIR, outputs_dir

KERNEL = "workbench"  # registered inside .venv by the Makefile


def notebook_path(name: str) -> Path:
    path = NOTEBOOKS_DIR / (name if name.endswith(".ipynb") else f"{name}.ipynb")
    if not path.exists():
        known = sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
        raise FileNotFoundError(f"{path}: no such notebook; available: {known}")
    return path


def kernel_name() -> str:
    """The project's kernel when registered, else the current interpreter's default."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def _slug(params: dict[str, Any]) -> str:
    text = "_".join(f"{k}-{v}" for k, v in sorted(params.items()) if k != "out_dir")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:80].strip("-")


def run_notebook(name: str, params: dict[str, Any] | None = None, *, out_dir: Path | None = None,
                 log_output: bool = False) -> Path:
    """Run notebook ``name`` with ``params``; return the executed copy's path.

    The notebook receives ``out_dir`` (its tables and figures folder) unless given.
    """
    import papermill as pm

    params = dict(params or {})
    src = notebook_path(name)
    stem = src.stem + (f"__{_slug(params)}" if _slug(params) else "")
    out_dir = Path(out_dir) if out_dir is not None else outputs_dir() / "notebooks" / stem
    out_dir.mkdir(parents=True, exist_ok=True)
    params.setdefault("out_dir", str(out_dir))
    executed = out_dir / f"{src.stem}.ipynb"
    pm.execute_notebook(str(src), str(executed), parameters=params, kernel_name=kernel_name(),
                        cwd=str(NOTEBOOKS_DIR), log_output=log_output, progress_bar=False)
    return executed


def _outputs(executed: str | Path) -> list[tuple[int, dict]]:
    """``(code cell index, output)`` for every output of an executed notebook, in order."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    return [(k, o) for k, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.get("outputs", [])]


def error_names(executed: str | Path) -> list[str]:
    """Names of the exceptions raised in an executed notebook's cells (empty when it ran cleanly)."""
    return [o.get("ename", "") for _, o in _outputs(executed) if o.get("output_type") == "error"]


# what IPython prints for a Figure it has no image formatter for: "<Figure size 660x400 with 1 Axes>"
_FIGURE_TEXT = re.compile(r"<(?:matplotlib\.figure\.)?Figure size [^>]*>")


def figure_outputs(executed: str | Path) -> list[int]:
    """Indices of the cells of an executed notebook, one entry per ``image/png`` output (a figure
    shown inline: ``display(fig)``, a returned Figure, or an image)."""
    return [k for k, o in _outputs(executed) if "image/png" in o.get("data", {})]


def text_figure_reprs(executed: str | Path) -> list[str]:
    """Figures shown only as text (``<Figure size ... with 1 Axes>``) instead of a picture, each as
    ``"cell K: <Figure ...>"``; empty when every figure rendered."""
    found = []
    for k, o in _outputs(executed):
        data = o.get("data", {})  # nbformat.read joins multi-line strings
        text = (data.get("text/plain", "") if "image/png" not in data else "") + o.get("text", "")
        found += [f"cell {k}: {m}" for m in _FIGURE_TEXT.findall(text)]
    return found


def missing_figures(executed: str | Path, figures: int) -> list[str]:
    """Why an executed notebook does not show ``figures`` figures as pictures: each figure printed
    as text, and a shortfall of ``image/png`` outputs; empty when every figure rendered."""
    problems = text_figure_reprs(executed)
    shown = len(figure_outputs(executed))
    if shown < figures:
        problems.append(f"{shown} image/png outputs for {figures} figures")
    return problems
