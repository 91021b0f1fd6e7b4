import json

from geofm.cli import main as geofm_main
from geofm.synth import main


def test_cli_writes_and_prints_summary(tmp_path, capsys):
    out = tmp_path / "s"
    rc = main([str(out), "--size", "64", "--chip-size", "32", "--n-dates", "5",
               "--cadence-days", "20", "--n-events", "1", "--seed", "2", "--start",
               "2021-12-01"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "5 items" in printed and "33UUP" in printed and "events: 33UUP" in printed
    truth = json.loads((out / "truth.json").read_text())
    assert truth["seed"] == 2 and truth["chip_size"] == 32 and len(truth["items"]) == 5
    assert truth["dates"][0] == "2021-12-01"


def test_cli_errors_exit_1_with_a_message(tmp_path, caplog):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert geofm_main(["synth", str(tmp_path / "x"), "--size", "64", "--chip-size", "32"]) == 1
    assert geofm_main(["synth", str(tmp_path / "y"), "--size", "65", "--chip-size", "32"]) == 1
    assert not (tmp_path / "y").exists()
