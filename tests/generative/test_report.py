"""``geofm report``: answers over the changed chips of a run (analysis/changes.parquet)."""

import json
import shutil

import geopandas as gpd
import pandas as pd
import pytest

from geofm.cli import main
from geofm.exceptions import GeofmFileNotFoundError
from geofm.generative.report import REPORT_COLUMNS, changed_chips

from .conftest import prompt_text

CHANGED = {"33UUP_64_0000_0001": ("2021-06-15", 4.0), "33UUP_64_0002_0003": ("2021-07-20", 9.0)}


@pytest.fixture(scope="module")
def analysed(indexed_root, tmp_path_factory):
    """The indexed root plus a change table (as `geofm analyze` writes it) for 3 chips."""
    root = tmp_path_factory.mktemp("report") / "root"
    shutil.copytree(indexed_root, root)
    cons = gpd.read_parquet(root / "consolidated.parquet").drop_duplicates("chip_id")
    rows = []
    for chip_id in [*CHANGED, "33UUP_64_0001_0001"]:
        when, mag = CHANGED.get(chip_id, (None, 0.5))
        rows.append({"chip_id": chip_id, "n_observations": 3, "n_baseline": 2,
                     "change": chip_id in CHANGED,
                     "change_date": pd.Timestamp(when, tz="UTC") if when else pd.NaT,
                     "magnitude": mag, "status": "change" if chip_id in CHANGED else "no change",
                     "geometry": cons.loc[cons["chip_id"] == chip_id, "geometry"].item()})
    (root / "analysis").mkdir()
    gpd.GeoDataFrame(rows, geometry="geometry", crs=4326).to_parquet(
        root / "analysis" / "changes.parquet")
    return root


def test_changed_chips_pick_the_acquisition_that_shows_the_change(analysed):
    hits = changed_chips(analysed)
    assert list(hits.columns) == [*REPORT_COLUMNS, "geometry"]
    assert list(hits["chip_id"]) == ["33UUP_64_0002_0003", "33UUP_64_0000_0001"]  # by magnitude
    assert list(hits["date"].dt.strftime("%Y-%m-%d")) == ["2021-08-01", "2021-07-01"]
    assert list(hits["scene_id"]) == ["S2A_33UUP_20210801_0_L2A", "S2A_33UUP_20210701_0_L2A"]
    assert (hits["change_status"] == "change").all()
    assert len(changed_chips(analysed, include_all=True)) == 3
    assert len(changed_chips(analysed, limit=1)) == 1


def test_report_grouped_over_changed_chips(analysed, server, capsys):
    code = main(["report", "--root", str(analysed), "--grouped-task", "Write a change report",
                 "--generative-provider", "openai", "--generative-base-url", server.base_url,
                 "--generative-model", "M", "--format", "json", "--with-images"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(server.requests) == 1
    text = prompt_text(server.requests[0]["body"])
    assert "change_date: 2021-07-20" in text and "change_date: 2021-06-15" in text
    assert "33UUP_64_0001_0001" not in text
    assert [h["chip_id"] for h in out["results"]] == list(changed_chips(analysed)["chip_id"])
    assert out["grouped"].startswith("ANSWER to: Write a change report")
    content = server.requests[0]["body"]["messages"][0]["content"]
    assert sum(p["type"] == "image_url" for p in content) == 2


def test_report_single_prompt_and_table(analysed, server, capsys):
    code = main(["report", "--root", str(analysed),
                 "--single-prompt", "What changed at {chip_id} around {change_date}?",
                 "--generative-provider", "openai", "--generative-base-url", server.base_url,
                 "--generative-model", "M"])
    table = capsys.readouterr().out
    assert code == 0
    assert [prompt_text(r["body"]) for r in server.requests] == [
        "What changed at 33UUP_64_0002_0003 around 2021-07-20?",
        "What changed at 33UUP_64_0000_0001 around 2021-06-15?"]
    assert "[1] 33UUP_64_0002_0003: ANSWER to: What changed" in table


def test_report_without_generation_and_without_analysis(analysed, indexed_root, capsys, cli_log):
    assert main(["report", "--root", str(analysed), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    with pytest.raises(GeofmFileNotFoundError, match="run `geofm analyze"):
        changed_chips(indexed_root)
    assert main(["report", "--root", str(indexed_root)]) == 1
    assert "no change table" in cli_log()


def test_report_placeholder_error_lists_report_columns(analysed, server, cli_log):
    code = main(["report", "--root", str(analysed), "--single-prompt", "{similarity}",
                 "--generative-provider", "openai", "--generative-base-url", server.base_url,
                 "--generative-model", "M"])
    assert code == 2 and server.requests == []
    assert "unknown placeholder {similarity}" in cli_log()
    assert "{magnitude}" in cli_log() and "{n_observations}" in cli_log()
