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


def error_names(executed: str | Path) -> list[str]:
    """Names of the exceptions raised in an executed notebook's cells (empty when it ran cleanly)."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    return [o.get("ename", "") for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
