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
