"""``make demo``: run every study notebook on the vendored data and write an index page.

Each job is (notebook, parameters); its executed copy, figures and tables land in
``outputs/demo/<job>/`` and ``outputs/demo/index.html`` links them all.
"""
from __future__ import annotations

import datetime as _dt
import html
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.core.atomic import write_text
from workbench.studies.notebooks import run_notebook
from workbench.core.paths import outputs_dir


@dataclass(frozen=True)
class Job:
    notebook: str
    params: dict[str, Any] = field(default_factory=dict)
    title: str = ""

    @property
    def slug(self) -> str:
        tail = "_".join(str(v) for k, v in sorted(self.params.items()) if k != "profile")
        return f"{self.notebook}__{tail}" if tail else self.notebook


def demo_jobs(profile: str) -> list[Job]:
    """The studies `make demo` runs, in order."""
    return [
        Job("01_dataset_audit", {"dataset": "bccd", "profile": profile}, "Dataset audit: BCCD blood cells (Pascal VOC)"),
        Job("01_dataset_audit", {"dataset": "monuseg", "profile": profile}, "Dataset audit: MoNuSeg H&E nuclei (ImageScope XML)"),
        Job("01_dataset_audit", {"dataset": "mnfinder", "profile": profile}, "Dataset audit: MNFinder micronuclei (instance masks)"),
        Job("02_style_levels", {"dataset": "bccd", "profile": profile},
            "Style levels: level-subset x test-level heatmap, incremental library additions (BCCD, derived levels)"),
        Job("03_pretrain_vs_scratch", {"dataset": "bccd", "profile": profile},
            "Pretrain on H&E nuclei (MoNuSeg) vs scratch, fine-tuned on BCCD"),
        Job("04_model_size", {"dataset": "bccd", "profile": profile}, "Model size vs mAP50 and latency on BCCD"),
        Job("05_independent_test", {"dataset": "bccd", "profile": profile},
            "Independent test: cascade vs detector-only on BCCD (WBC, Platelets vs RBC), rates with CIs"),
        Job("05_independent_test", {"dataset": "mnfinder", "group_by": "set", "profile": profile},
            "Independent test: micronuclei vs nuclei (MNFinder), per acquisition set"),
        Job("06_inspect_hard_cases", {"profile": profile}, "Hard-case queue (GT vs predictions, TP/FP/FN)"),
        Job("07_large_images", {"profile": profile}, "Large images: tiled vs two-stage vs resized, time vs accuracy"),
        Job("08_micronuclei", {"profile": profile},
            "Micronuclei: native vs upsampled vs P2 vs nucleus-guided; MN recall/precision per matching criterion, MN frequency"),
    ]


def run_demo(*, profile: str = "smoke", out_dir: Path | None = None, jobs: list[Job] | None = None) -> Path:
    """Execute the demo jobs (a failing job is reported on the index, the others still run)."""
    out_dir = Path(out_dir) if out_dir is not None else outputs_dir() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for job in jobs if jobs is not None else demo_jobs(profile):
        job_dir = out_dir / job.slug
        t0 = time.perf_counter()
        try:
            executed = run_notebook(job.notebook, job.params, out_dir=job_dir)
            _to_html(executed)
            error = ""
        except Exception as exc:  # keep going: the index shows which study failed and why
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        results.append((job, job_dir, time.perf_counter() - t0, error))
        print(f"[demo] {job.slug}: {'FAILED' if error else 'ok'} ({results[-1][2]:.0f} s)", flush=True)
    index = out_dir / "index.html"
    write_text(index, render_index(results, out_dir, profile))
    failed = [r[0].slug for r in results if r[3]]
    if failed:
        raise RuntimeError(f"demo jobs failed: {failed}; see {index}")
    return index


def _to_html(executed: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(executed))
    return write_text(executed.with_suffix(".html"), body)


def render_index(results: list[tuple[Job, Path, float, str]], out_dir: Path, profile: str) -> str:
    """The index page: one section per job with links to its notebook, figures and tables."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>Cell Workbench demo</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "img{max-width:320px;margin:4px;border:1px solid #ccc}.err{color:#b00}</style>",
             f"<h1>Cell Workbench demo ({html.escape(profile)} profile)</h1>",
             f"<p>Generated {_dt.datetime.now().isoformat(timespec='seconds')} from the vendored data.</p>"]
    for job, job_dir, seconds, error in results:
        rel = lambda p: html.escape(str(p.relative_to(out_dir)))  # noqa: E731
        parts.append(f"<h2>{html.escape(job.title or job.slug)}</h2>")
        parts.append(f"<p><code>{html.escape(job.notebook)}</code> {html.escape(str(job.params))} — {seconds:.0f} s</p>")
        if error:
            parts.append(f"<pre class='err'>{html.escape(error)}</pre>")
            continue
        nb = job_dir / f"{job.notebook}.ipynb"
        parts.append(f"<p>Notebook: <a href='{rel(nb.with_suffix('.html'))}'>HTML</a> · <a href='{rel(nb)}'>ipynb</a></p>")
        figures = sorted(job_dir.rglob("*.png"))
        if figures:
            parts.append("<div>" + "".join(f"<a href='{rel(f)}'><img src='{rel(f)}' title='{html.escape(f.stem)}'></a>"
                                           for f in figures) + "</div>")
        tables = sorted(job_dir.rglob("*.csv")) + sorted(job_dir.rglob("*.json"))
        if tables:
            parts.append("<ul>" + "".join(f"<li><a href='{rel(t)}'>{rel(t)}</a></li>" for t in tables) + "</ul>")
    return "\n".join(parts) + "\n"
