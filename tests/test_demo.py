"""``geofm demo``: the whole pipeline on synthetic data, scored against the planted truth."""

import json

import pytest

from geofm.cli import main


@pytest.mark.slow
def test_demo_writes_a_report_scored_against_truth(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--size", "256", "--n-dates", "14",
                 "--chip-size", "64", "--no-progress"])
    assert code == 0
    report = (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "## Similarity search" in report and "## Change detection" in report
    assert "random weights" in report
    assert report.strip() in printed
    stages = json.loads((out / "run" / "run.json").read_text())["stages"]
    assert all(stages[s]["status"] == "ok" for s in ("chip", "embed", "analyze", "index"))
    # the report's stage table follows the pipeline order
    order = [report.index(f"| {s} |") for s in ("chip", "embed", "analyze", "index")]
    assert order == sorted(order)
    truth = json.loads((out / "data" / "truth.json").read_text())
    for event in truth["events"]:
        chip_id = f"{event['tile']}_64_{event['row']:04d}_{event['col']:04d}"
        assert chip_id in report  # every planted event is listed, detected or not
    # a second run reuses the data and resumes: nothing to recompute
    assert main(["demo", "--out", str(out), "--size", "256", "--n-dates", "14",
                 "--no-progress"]) == 0
    stages = json.loads((out / "run" / "run.json").read_text())["stages"]
    assert stages["embed"]["counts"]["chips"] == 0
