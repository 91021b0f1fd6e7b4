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
