import subprocess
import sys

import pytest

from geofm import __version__
from geofm.cli import SUBCOMMANDS, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"geofm {__version__}"


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help_and_version(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: geofm {command}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([command, "--version"])
    assert exc.value.code == 0


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "geofm", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"geofm {__version__}"


_SEARCH = ["search", "--root", "r", "--chip-id", "c"]


@pytest.mark.parametrize("argv, message", [
    (_SEARCH + ["--k", "0"], "argument --k: must be a positive integer (>= 1), got 0"),
    (_SEARCH + ["--k", "-3"], "argument --k: must be a positive integer (>= 1), got -3"),
    (_SEARCH + ["--k", "ten"], "argument --k: 'ten' is not an integer"),
    (_SEARCH + ["--bbox=1,2,3"], "argument --bbox: bbox '1,2,3' must be four numbers W,S,E,N"),
    (_SEARCH + ["--bbox=10,2,5,4"], "argument --bbox: bbox '10,2,5,4' must have W < E and S < N"),
    (_SEARCH + ["--bbox=1,4,5,2"], "argument --bbox: bbox '1,4,5,2' must have W < E and S < N"),
    (_SEARCH + ["--min-similarity", "1.5"],
     "argument --min-similarity: a cosine similarity is in [-1, 1], got 1.5"),
    (_SEARCH + ["--min-similarity", "-2"],
     "argument --min-similarity: a cosine similarity is in [-1, 1], got -2"),
    (_SEARCH + ["--start", "2022-03-01", "--end", "2022-02-01"],
     "--start 2022-03-01 is after --end 2022-02-01"),
    (_SEARCH + ["--end", "2022-02-01", "--start", "2022-03-01"],
     "--start 2022-03-01 is after --end 2022-02-01"),
    (_SEARCH + ["--date", "notadate"], "argument --date: cannot parse date 'notadate'"),
    (_SEARCH + ["--start", "2021-02-30"], "argument --start: cannot parse date '2021-02-30'"),
    (["chip", "--items", "i", "--out", "r", "--chip-size", "0"],
     "argument --chip-size: must be a positive integer (>= 1), got 0"),
    (["chip", "--items", "i", "--out", "r", "--workers", "0"],
     "argument --workers: must be a positive integer (>= 1), got 0"),
    (["embed", "--root", "r", "--model", "tiny", "--batch-size", "0"],
     "argument --batch-size: must be a positive integer (>= 1), got 0"),
    (["run", "--root", "r", "--batch-size", "0"],
     "argument --batch-size: must be a positive integer (>= 1), got 0"),
    (["run", "--root", "r", "--chip-size", "-1"],
     "argument --chip-size: must be a positive integer (>= 1), got -1"),
])
def test_bad_flag_values_exit_2_at_parse_time(argv, message, capsys, tmp_path,
                                              monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, not even a root
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: geofm " + argv[0])
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_good_date_range_and_similarity_parse(capsys):
    from geofm.cli import build_parser

    args = build_parser("search").parse_args(
        _SEARCH + ["--start", "2022-02-01", "--end", "2022-02-01", "--min-similarity", "-1",
                   "--bbox=-10.5,40,-9,41", "--k", "1"])
    assert (args.start, args.end, args.min_similarity, args.k) == ("2022-02-01",
                                                                   "2022-02-01", -1.0, 1)
    assert args.bbox == (-10.5, 40.0, -9.0, 41.0)
