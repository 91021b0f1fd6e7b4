"""``geofm demo``: the whole pipeline on built-in synthetic data, no network, no weights.

synth -> chip -> embed (random-weight ``tiny`` encoder) -> analyze -> index, then a few
example searches and a change summary scored against the planted truth, printed as a
report and written to ``OUT/report.md`` with the maps and plots it references.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geofm.layout import RunRoot
from geofm.manifest import read_manifest
from geofm.pipeline import PipelineConfig, run_pipeline

log = logging.getLogger(__name__)


@dataclass
class DemoReport:
    """What the demo found, ready to print or write as Markdown.

    Attributes:
        out: demo folder (``data/`` synthetic input, ``run/`` run root).
        stages: per-stage status and counts from ``run.json``.
        searches: one entry per example query (class, query chip, hits, precision).
        changes: change detection scored against the planted events.
    """

    out: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    searches: list[dict[str, Any]] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        """The report as Markdown (links relative to ``out``)."""
        lines = ["# geofm demo report", "",
                 "Synthetic Sentinel-2 L2A time series (`data/`), run root `run/`. The encoder "
                 "has **random weights** (no checkpoint can be downloaded here): embeddings "
                 "are a fixed random function of the pixels that mostly keeps brightness and "
                 "texture (at random initialisation Clay gives every band nearly the same "
                 "patch kernel), good enough to show the pipeline, not Clay's quality.", "",
                 "## Stages", "",
                 "| stage | status | seconds | counts |", "| --- | --- | --- | --- |"]
        for name, entry in self.stages.items():
            counts = ", ".join(f"{k} {v}" for k, v in entry.get("counts", {}).items())
            lines.append(f"| {name} | {entry.get('status')} | {entry.get('seconds')} | {counts} |")
        lines += ["", "## Similarity search", "",
                  "Query: one chip of each land-cover class (its latest acquisition); top "
                  "hits, one per place, and the share of hits of the same class (from "
                  "`data/truth.json`). With random weights all vectors are nearly "
                  "parallel, hence similarities close to 1.", "",
                  "| class | query chip | precision@k | top hits (similarity) |",
                  "| --- | --- | --- | --- |"]
        for s in self.searches:
            hits = ", ".join(f"{h['chip_id']} ({h['similarity']:.6f}, {h['class']})"
                             for h in s["hits"][:3])
            lines.append(f"| {s['class']} | {s['query']} | {s['precision']:.2f} | {hits} |")
        c = self.changes
        lines += ["", "## Change detection", "",
                  f"Planted deforestation events: {c.get('events', 0)}; detected: "
                  f"{c.get('true_positives', 0)} (recall {c.get('recall', 0):.2f}); false "
                  f"alarms: {c.get('false_alarms', 0)} of {c.get('unchanged', 0)} unchanged "
                  f"chips; insufficient data: {c.get('insufficient', 0)} chips.", "",
                  "| chip | planted event | first changed acquisition | detected change date |",
                  "| --- | --- | --- | --- |"]
        for row in c.get("rows", []):
            lines.append(f"| {row['chip_id']} | {row['event_date']} | {row['first_changed']} | "
                         f"{row['detected'] or 'not detected'} |")
        lines += ["", "Change map: [`run/analysis/change_map.geojson`]"
                  "(run/analysis/change_map.geojson) (opens in QGIS).", ""]
        for plot in c.get("plots", []):
            lines.append(f"![timeline]({plot})")
        lines += ["", "Try a search yourself:", "",
                  "```", f"geofm search --root {self.out / 'run'} --chip-id "
                  f"{self.searches[0]['query'] if self.searches else 'CHIP_ID'} --k 5 --distinct",
                  "```", ""]
        return "\n".join(lines)


def _cell_chip_id(cell: dict[str, Any], chip_size: int) -> str:
    from geofm.chip import chip_id

    return chip_id(cell["tile"], chip_size, cell["row"], cell["col"])


def _example_searches(root: Path, truth: dict[str, Any], *, k: int) -> list[dict[str, Any]]:
    import pandas as pd

    from geofm.search import search

    chip_size = int(truth["chip_size"])
    classes = {_cell_chip_id(c, chip_size): c["class"] for c in truth["cells"]}
    indexed = set(pd.read_parquet(RunRoot.of(root).consolidated_path,
                                  columns=["chip_id"])["chip_id"])
    changed = {_cell_chip_id(e, chip_size) for e in truth["events"]}
    results = []
    for name in sorted(set(classes.values())):
        candidates = sorted(cid for cid, cls in classes.items()
                            if cls == name and cid in indexed and cid not in changed)
        if not candidates:
            continue
        query = candidates[0]
        hits = search(root, chip_ids=[query], k=k, distinct=True)
        rows = [{"chip_id": h.chip_id, "similarity": float(h.similarity),
                 "class": classes.get(h.chip_id, "?")} for h in hits.itertuples()]
        precision = sum(r["class"] == name for r in rows) / max(len(rows), 1)
        results.append({"class": name, "query": query, "hits": rows, "precision": precision})
    return results


def _score_changes(root: Path, truth: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    run = RunRoot.of(root)
    changes = pd.read_parquet(run.analysis_dir / "changes.parquet")
    chip_size = int(truth["chip_size"])
    events = {_cell_chip_id(e, chip_size): e for e in truth["events"]}
    detected = changes[changes["status"] == "change"].set_index("chip_id")
    rows = []
    for chip_id, event in sorted(events.items()):
        date = detected["change_date"].get(chip_id) if chip_id in detected.index else None
        rows.append({"chip_id": chip_id, "event_date": event["date"],
                     "first_changed": event.get("first_changed_date"),
                     "detected": None if date is None else str(pd.Timestamp(date).date())})
    true_positives = sum(r["detected"] is not None for r in rows)
    unchanged = changes[~changes["chip_id"].isin(list(events))]
    plots = sorted(str(p.relative_to(run.path.parent))
                   for p in run.plots_dir.glob("*.png"))[:4] if run.plots_dir.is_dir() else []
    return {
        "events": len(events), "true_positives": true_positives,
        "recall": true_positives / max(len(events), 1),
        "false_alarms": int((unchanged["status"] == "change").sum()),
        "unchanged": int((unchanged["status"] != "insufficient data").sum()),
        "insufficient": int((changes["status"] == "insufficient data").sum()),
        "rows": rows, "plots": plots,
    }


def demo(out: str | os.PathLike[str], *, seed: int = 0, size: int = 512, n_dates: int = 36,
         chip_size: int = 64, k: int = 5, progress: bool = True) -> DemoReport:
    """Run the demo into ``out`` and return its report (also written to ``out/report.md``).

    Re-running with the same ``out`` reuses the synthetic data and resumes the run.

    Args:
        out: demo folder.
        seed: seed of the synthetic data.
        size: synthetic tile size, pixels (10 m).
        n_dates: number of acquisitions.
        chip_size: chip size, pixels.
        k: hits per example search.
        progress: show progress bars.

    Raises:
        RootLockedError: another process is writing into ``out/run``.
    """
    from geofm.lock import root_lock

    out = Path(out)
    with root_lock(out / "run", stage="demo"):
        return _demo(out, seed=seed, size=size, n_dates=n_dates, chip_size=chip_size, k=k,
                     progress=progress)


def _demo(out: Path, *, seed: int, size: int, n_dates: int, chip_size: int, k: int,
          progress: bool) -> DemoReport:
    import warnings

    from geofm.exceptions import GeofmWarning
    from geofm.synth import synthesize

    data = out / "data"
    if not (data / "truth.json").exists():
        synthesize(data, seed=seed, size=size, n_dates=n_dates, chip_size=chip_size,
                   overwrite=True)
    truth = json.loads((data / "truth.json").read_text(encoding="utf-8"))
    root = out / "run"
    config = PipelineConfig(root=root, items=data / "items", progress=progress, options={
        "chip": {"chip_size": chip_size}, "embed": {"model": "tiny"},
        "analyze": {}, "index": {}})
    with warnings.catch_warnings():
        # The demo has no checkpoint by design; the report says so instead of a warning.
        warnings.simplefilter("ignore", GeofmWarning)
        run_pipeline(config)
    stages = read_manifest(root)["stages"]
    report = DemoReport(out=out, stages={s: stages[s] for s in config.stages if s in stages})
    report.searches = _example_searches(root, truth, k=k)
    report.changes = _score_changes(root, truth)
    (out / "report.md").write_text(report.markdown(), encoding="utf-8")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``geofm demo``."""
    parser.add_argument("--out", type=Path, default=Path("demo-run"),
                        help="demo folder (default: ./demo-run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--size", type=int, default=512, help="tile size in 10 m pixels")
    parser.add_argument("--n-dates", type=int, default=36, help="number of acquisitions")
    parser.add_argument("--chip-size", type=int, default=64, help="chip size in pixels")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace) -> int:
    """``geofm demo``: print the report; exit 1 if any stage recorded failures."""
    report = demo(args.out, seed=args.seed, size=args.size, n_dates=args.n_dates,
                  chip_size=args.chip_size, progress=not args.no_progress)
    print(report.markdown())
    print(f"\nReport written to {args.out / 'report.md'}")
    print(f"Browse the run on a map: geofm serve --root {args.out / 'run'}")
    return 1 if any(s.get("status") != "ok" for s in report.stages.values()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.demo`` = ``geofm demo``."""
    from geofm.cli import stage_main

    return stage_main("demo", argv)
