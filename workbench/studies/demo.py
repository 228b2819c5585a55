"""``make demo``: run every study notebook on the vendored data and write an index page.

Each job is (notebook, parameters); its executed copy (ipynb + offline HTML), figures and tables
land in ``outputs/demo/<job>/`` and ``outputs/demo/index.html`` links them all, one section per
job with a line saying what its figures show and under which profile. Figures are the PNGs a
study saved with a PDF beside them (never training tiles or images under ``work/``).
"""
from __future__ import annotations

import datetime as _dt
import html
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.core.atomic import write_text
from workbench.core.paths import outputs_dir
from workbench.studies.notebooks import run_notebook

DEMO = "demo"  # make demo's default: the audits and one real model end to end, ~15 min on 2 CPU cores
# what the smoke profile's numbers mean (every section of a smoke demo says it)
PROFILE_NOTES = {"smoke": "smoke profile: vendored data, models trained for an epoch or two; proves the pipeline, "
                          "the numbers mean nothing",
                 "full": "full profile: the fuller ../shared data and full training (GPU)",
                 DEMO: "demo profile: a real detector fine-tuned for 10 epochs from the committed source model; "
                       "a demonstration on held-out test images, not a study result"}


@dataclass(frozen=True)
class Job:
    notebook: str
    params: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    shows: str = ""  # one line: what the job's figures show
    note: str = ""  # what its profile means here (default: PROFILE_NOTES of its profile)

    @property
    def slug(self) -> str:
        """The job's folder name: the notebook and its parameter values (paths by their last part)."""
        tail = "_".join(Path(str(v)).name for k, v in sorted(self.params.items()) if k not in ("profile", "run", "screenshot"))
        return f"{self.notebook}__{tail}" if tail else self.notebook


HELD_OUT = ("05_independent_test", {"dataset": "bccd", "profile": DEMO})  # the real model's study


def demo_jobs(profile: str, out_dir: Path | None = None) -> list[Job]:
    """The jobs `make demo` runs, in order.

    ``demo`` (the default): the three audits, then one real BCCD detector fine-tuned from the
    committed MoNuSeg source model and a crop classifier (notebook 05's ``demo`` profile: independent
    test, cascade, statistics, overlays), then notebook 06's hard-case gallery on *that* detector and
    its held-out test images. The long studies are not re-run: the index links their committed
    results (``outputs/results/``). ``smoke`` / ``full``: every study notebook at that profile (the
    smoke run proves the pipeline, as the tests do).
    """
    if profile == DEMO:
        return _real_model_jobs(Path(out_dir) if out_dir is not None else outputs_dir() / "demo")
    audit = ("Objects per class and split, box sizes, objects per image, density classes, quality proxies "
             "and example images with their boxes")
    return [
        Job("01_dataset_audit", {"dataset": "bccd", "profile": profile}, "Dataset audit: BCCD blood cells (Pascal VOC)",
            audit),
        Job("01_dataset_audit", {"dataset": "monuseg", "profile": profile},
            "Dataset audit: MoNuSeg H&E nuclei (ImageScope XML)", audit),
        Job("01_dataset_audit", {"dataset": "mnfinder", "profile": profile},
            "Dataset audit: MNFinder micronuclei (instance masks)", audit),
        Job("02_style_levels", {"dataset": "bccd", "profile": profile},
            "Style levels: level-subset x test-level heatmap, incremental library additions (BCCD, derived levels)",
            "mAP50, detection rate and FN rate of each training subset on each test level (heatmaps), and "
            "mAP50 as library batches are added"),
        Job("03_pretrain_vs_scratch", {"dataset": "bccd", "profile": profile},
            "Pretrain on H&E nuclei (MoNuSeg) vs scratch, fine-tuned on BCCD",
            "Validation mAP50 and mAP50-95 per epoch of each arm, test mAP50 per arm with its interval, and "
            "mAP50 against the share of labelled training images"),
        Job("04_model_size", {"dataset": "bccd", "profile": profile}, "Model size vs mAP50 and latency on BCCD",
            "Parameters against mAP50, with the latency per image of each model"),
        Job("05_independent_test", {"dataset": "bccd", "profile": profile},
            "Independent test: cascade vs detector-only on BCCD (WBC, Platelets vs RBC), rates with CIs",
            "Class shares, cell sizes and neighbourhood counts (truth vs cascade), and the worst test images"),
        Job("05_independent_test", {"dataset": "mnfinder", "group_by": "set", "profile": profile},
            "Independent test: micronuclei vs nuclei (MNFinder), per acquisition set",
            "Class shares, cell sizes and neighbourhood counts (truth vs cascade), and the worst test images"),
        Job("06_inspect_hard_cases", {"profile": profile}, "Hard-case queue (GT vs predictions, TP/FP/FN)",
            "No figure files: the notebook shows the hardest images as a gallery (static in its HTML)"),
        Job("07_large_images", {"profile": profile}, "Large images: tiled vs two-stage vs resized, time vs accuracy",
            "Time per image against mAP50 for each method, on H&E tiles and on 3x micronucleus images"),
        Job("08_micronuclei", {"profile": profile},
            "Micronuclei: native vs upsampled vs P2 vs nucleus-guided; MN recall/precision per matching criterion, MN frequency",
            "MN recall and precision per matching criterion, and MN frequency per image against the truth"),
    ]


def _real_model_jobs(out_dir: Path) -> list[Job]:
    from workbench.studies.independent_test import IndependentTestStudy

    audit = ("Objects per class and split, box sizes, objects per image, density classes, quality proxies "
             "and example images with their boxes")
    held_out = Job(*HELD_OUT, "Independent test with a real model: BCCD detector fine-tuned from the MoNuSeg "
                              "source model, cascade vs detector-only (WBC, Platelets vs RBC), rates with CIs",
                   "Class shares, cell sizes and neighbourhood counts (truth vs cascade), and the worst test images")
    study = IndependentTestStudy(HELD_OUT[1]["dataset"], profile=DEMO, out_dir=out_dir / held_out.slug)
    study.prepare()  # the held-out copy (cheap, idempotent): notebook 06 inspects its test images
    vendored = "the vendored data as shipped; no model involved"
    return [
        Job("01_dataset_audit", {"dataset": "bccd", "profile": "smoke"}, "Dataset audit: BCCD blood cells (Pascal VOC)",
            audit, vendored),
        Job("01_dataset_audit", {"dataset": "monuseg", "profile": "smoke"},
            "Dataset audit: MoNuSeg H&E nuclei (ImageScope XML)", audit, vendored),
        Job("01_dataset_audit", {"dataset": "mnfinder", "profile": "smoke"},
            "Dataset audit: MNFinder micronuclei (instance masks)", audit, vendored),
        held_out,
        Job("06_inspect_hard_cases", {"dataset": str(study.data), "split": "test", "run": str(study.detector_run),
                                      "profile": DEMO, "screenshot": True},
            "Hard cases of the same detector on its held-out test images",
            "The hardest test image as the napari inspector draws it (labels and predictions coloured by outcome; "
            "rendered under xvfb-run when there is no display); the notebook pages through the hardest images as a "
            "gallery (static in its HTML)"),
    ]


ONLY_ENV = "WORKBENCH_DEMO_ONLY"  # `make demo ONLY="01 04"`


def selected(jobs: list[Job], only: str) -> list[Job]:
    """The jobs named in ``only`` (all when empty): notebook numbers (``03``), notebook names or
    job slugs, separated by spaces or commas."""
    names = set(only.replace(",", " ").split())
    if not names:
        return jobs

    def named(job: Job, name: str) -> bool:
        return name in (job.notebook, job.slug, job.notebook.split("_", 1)[0])

    unknown = sorted(n for n in names if not any(named(j, n) for j in jobs))
    if unknown:
        raise ValueError(f"{ONLY_ENV}: no demo job named {unknown}; jobs: {[j.slug for j in jobs]}")
    return [j for j in jobs if any(named(j, n) for n in names)]


def run_demo(*, profile: str = DEMO, out_dir: Path | None = None, jobs: list[Job] | None = None) -> Path:
    """Execute the demo jobs (a failing job is reported on the index, the others still run).

    ``jobs`` defaults to :func:`demo_jobs`, narrowed by the environment variable ``WORKBENCH_DEMO_ONLY``
    (``make demo ONLY=...``, see :func:`selected`)."""
    out_dir = Path(out_dir) if out_dir is not None else outputs_dir() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    if jobs is None:
        jobs = selected(demo_jobs(profile, out_dir), os.environ.get(ONLY_ENV, ""))
    for job in jobs:
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
    from workbench.studies.notebook_html import notebook_html

    return write_text(executed.with_suffix(".html"), notebook_html(executed))


def figure_files(job_dir: Path) -> list[Path]:
    """The figures a job wrote: PNGs saved with a PDF beside them (``save_figure``, the audit),
    outside ``work/`` folders (runs, training tiles, dataset copies)."""
    return sorted(p for p in job_dir.rglob("*.png")
                  if p.with_suffix(".pdf").exists() and "work" not in p.relative_to(job_dir).parts)


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
        job_profile = str(job.params.get("profile", profile))
        note = job.note or PROFILE_NOTES.get(job_profile, f"{job_profile} profile")
        parts.append(f"<p class='shows'>{html.escape(job.shows or 'Figures')} ({html.escape(note)}).</p>")
        if error:
            parts.append(f"<pre class='err'>{html.escape(error)}</pre>")
            continue
        nb = job_dir / f"{job.notebook}.ipynb"
        parts.append(f"<p>Notebook: <a href='{rel(nb.with_suffix('.html'))}'>HTML</a> · <a href='{rel(nb)}'>ipynb</a></p>")
        figures = figure_files(job_dir)
        if figures:
            parts.append("<div>" + "".join(f"<a href='{rel(f)}'><img src='{rel(f)}' title='{html.escape(f.stem)}'></a>"
                                           for f in figures) + "</div>")
        tables = [t for t in sorted(job_dir.rglob("*.csv")) + sorted(job_dir.rglob("*.json"))
                  if "work" not in t.relative_to(job_dir).parts]
        if tables:
            parts.append("<ul>" + "".join(f"<li><a href='{rel(t)}'>{rel(t)}</a></li>" for t in tables) + "</ul>")
    parts += committed_results_section(out_dir)
    return "\n".join(parts) + "\n"


def committed_results_section(out_dir: Path) -> list[str]:
    """Links to the committed long-study results (``outputs/results/<notebook>/``), labelled as such."""
    from workbench.studies.results import results_root

    root = results_root()
    found = sorted(p for p in root.glob("*/README.md")) if root.is_dir() else []
    parts = ["<h2>Long studies: committed results</h2>",
             "<p>Not re-run by <code>make demo</code>: these are the committed outputs of <code>make results</code> "
             "(each study's cpu profile, hours on 2 CPU cores), with their provenance.</p>"]
    if not found:
        return parts + ["<p>No study results are committed yet: <code>make results</code> produces them.</p>"]
    for readme in found:
        rel = os.path.relpath(readme.parent, out_dir)
        pngs = sorted(readme.parent.glob("*.png"))
        parts.append(f"<h3>{html.escape(readme.parent.name)}</h3><p><a href='{html.escape(rel)}/README.md'>README "
                     f"(headline tables, provenance)</a></p>")
        parts.append("<div>" + "".join(f"<img src='{html.escape(rel)}/{html.escape(p.name)}' title='{html.escape(p.stem)}'>"
                                       for p in pngs) + "</div>")
    return parts
