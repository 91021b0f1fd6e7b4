import json

import pytest

from geofm.exceptions import GeofmValueError, StageFailedError
from geofm.manifest import StageRecord, read_manifest


def test_stage_record_writes_status_counts_and_failures(tmp_path):
    with StageRecord(tmp_path, "chip", config={"chip_size": 64}) as record:
        record.counts["scenes"] = 3
        record.fail("S2A_1", "truncated COG", asset="red", path="/x/red.tif")
        record.extra["coverage"] = {"a": 1}
    data = json.loads((tmp_path / "run.json").read_text())
    entry = data["stages"]["chip"]
    assert entry["status"] == "failed"
    assert entry["counts"] == {"scenes": 3}
    assert entry["config"] == {"chip_size": 64}
    assert entry["failures"] == [{"unit": "S2A_1", "reason": "truncated COG", "asset": "red",
                                  "path": "/x/red.tif"}]
    assert entry["coverage"] == {"a": 1}
    assert entry["seconds"] >= 0 and "numpy" in entry["versions"]


def test_stages_accumulate_and_errors_are_recorded(tmp_path):
    with StageRecord(tmp_path, "chip"):
        pass
    with pytest.raises(GeofmValueError), StageRecord(tmp_path, "embed"):
        raise GeofmValueError("bad checkpoint")
    stages = read_manifest(tmp_path)["stages"]
    assert stages["chip"]["status"] == "ok"
    assert stages["embed"]["status"] == "error"
    assert "bad checkpoint" in stages["embed"]["error"]


def test_raise_if_failed_names_units(tmp_path):
    record = StageRecord(tmp_path, "embed")
    record.raise_if_failed()  # nothing failed: no error
    record.fail("chip_1", "NaN output")
    with pytest.raises(StageFailedError, match=r"(?s)1 unit\(s\) failed.*chip_1: NaN output"):
        record.raise_if_failed()


def test_read_manifest_of_new_root(tmp_path):
    assert read_manifest(tmp_path / "nothing") == {"stages": {}}


def test_stage_entry_records_an_error_raised_before_the_stage_record(tmp_path):
    from geofm.manifest import stage_entry

    @stage_entry("embed")
    def fake_stage(root, *, batch_size: int = 64, opened: bool = False):
        if not opened:
            raise GeofmValueError(f"batch_size must be >= 1, got {batch_size}")
        with StageRecord(root, "embed", config={"batch_size": batch_size}):
            raise GeofmValueError("failed after the record was opened")

    with pytest.raises(GeofmValueError, match="batch_size must be"):
        fake_stage(tmp_path, batch_size=0)
    entry = read_manifest(tmp_path)["stages"]["embed"]
    assert entry["status"] == "error"
    assert entry["error"] == "GeofmValueError: batch_size must be >= 1, got 0"
    assert entry["config"] == {"batch_size": 0}  # the arguments as given
    with pytest.raises(GeofmValueError, match="after the record"):
        fake_stage(tmp_path, batch_size=8, opened=True)
    entry = read_manifest(tmp_path)["stages"]["embed"]  # recorded once, by the record
    assert entry["error"].endswith("failed after the record was opened")
    assert entry["config"] == {"batch_size": 8}


def test_embed_without_chip_metadata_is_recorded_as_an_error(tmp_path):
    from geofm.embed import embed
    from geofm.exceptions import GeofmFileNotFoundError

    with pytest.raises(GeofmFileNotFoundError, match="no chip metadata"):
        embed(tmp_path, model="tiny", progress=False)
    entry = read_manifest(tmp_path)["stages"]["embed"]
    assert entry["status"] == "error" and "no chip metadata" in entry["error"]
    assert entry["config"]["model"] == "tiny"


def test_analyze_bad_option_is_recorded_as_an_error(tmp_path):
    from geofm.analyze import analyze

    with pytest.raises(GeofmValueError, match="signal='pc99'"):
        analyze(tmp_path, signal="pc99", progress=False)
    entry = read_manifest(tmp_path)["stages"]["analyze"]
    assert entry["status"] == "error" and "signal='pc99' is not valid" in entry["error"]


def test_chip_without_items_is_recorded_as_an_error_and_a_new_root_is_not_created(tmp_path):
    from geofm.chip import chip
    from geofm.exceptions import GeofmError

    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(GeofmError):
        chip(tmp_path / "no-items", root, progress=False)
    entry = read_manifest(root)["stages"]["chip"]
    assert entry["status"] == "error" and "no-items" in entry["error"]
    with pytest.raises(GeofmError):
        chip(tmp_path / "no-items", tmp_path / "new-root", progress=False)
    assert not (tmp_path / "new-root").exists()  # bad input leaves nothing behind


def test_cli_records_a_fatal_error_and_exits_1(tmp_path, capsys):
    from geofm.cli import main

    assert main(["index", "--root", str(tmp_path)]) == 1
    entry = read_manifest(tmp_path)["stages"]["index"]
    assert entry["status"] == "error"
    assert entry["error"].split(": ", 1)[1] in capsys.readouterr().err
