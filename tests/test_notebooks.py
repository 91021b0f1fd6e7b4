"""The analyst notebooks run top to bottom on a small synthetic run, and are stored clean.

A session fixture builds one synthetic run (synth -> chip -> embed -> analyze -> index,
random-weight ``tiny`` encoder, no network) with a baseline year (2021) and a
monitoring period (2022); each notebook is executed with nbclient in a ``python3``
kernel whose ``GEOFM_RUN_ROOT`` / ``GEOFM_SYNTH_DIR`` point at it. A failing cell raises
``nbclient.exceptions.CellExecutionError`` and fails the test.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_similarity_search.ipynb", "02_change_detection.ipynb",
            "03_finetune_segmentation.ipynb"]

#: 4 x 4 chips of 64 px, 24 monthly dates from 2021-01-01 (baseline 2021, monitoring
#: 2022), two planted clearings.
NOTEBOOK_SYNTH = dict(seed=0, size=256, n_dates=24, start="2021-01-01", cadence_days=30,
                      n_events=2, chip_size=64)


def test_the_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_reading_the_run_root(path: Path) -> None:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
    assert "GEOFM_RUN_ROOT" in tagged[0].source
    others = [c.source for c in nb.cells if c.cell_type == "code" and c is not tagged[0]]
    assert not any("GEOFM_RUN_ROOT" in s for s in others), \
        f"{path.name}: the run root must be set in the parameters cell only"


def test_notebooks_use_only_public_geofm_names() -> None:
    import re

    import nbformat

    private = re.compile(r"from geofm[\w.]* import [^\n]*\b_\w|geofm\.[\w.]*\._\w|geofm\._")
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not private.search(cell.source), f"{path.name}: private geofm name in\n" \
                                                        f"{cell.source}"


@pytest.fixture(scope="session")
def notebook_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run root, synthetic data folder) of the run every notebook opens (read-only)."""
    from geofm.exceptions import GeofmWarning
    from geofm.pipeline import PipelineConfig, run_pipeline
    from geofm.synth import synthesize

    base = tmp_path_factory.mktemp("notebooks")
    synth = synthesize(base / "synth", **NOTEBOOK_SYNTH)
    root = base / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeofmWarning)  # random weights: expected here
        records = run_pipeline(PipelineConfig(
            root=root, items=synth / "items", progress=False,
            options={"chip": {"chip_size": 64}, "embed": {"model": "tiny", "batch_size": 32},
                     "analyze": {}, "index": {}}))
    assert not any(r.failures for r in records.values())
    return root, synth


def _kernel_name() -> str:
    """The ``python3`` kernel, checked to be this interpreter's (the venv's)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    argv0 = spec.argv[0]
    if argv0 not in ("python", "python3", "{python}") and Path(argv0).resolve() != Path(
            sys.executable).resolve():
        pytest.fail(f"kernel python3 runs {argv0}, not {sys.executable}; run "
                    f"`{sys.executable} -m ipykernel install --sys-prefix`")
    return "python3"


def execute(path: Path, workdir: Path, env: dict[str, str], *, timeout: int = 300) -> object:
    """Run a notebook top to bottom in ``workdir``; return the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=_kernel_name(),
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**os.environ, **env})  # the kernel's environment
    return nb


def _images(nb: object) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code"  # type: ignore[attr-defined]
               for o in c.outputs if "image/png" in o.get("data", {}))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, notebook_run: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    root, synth = notebook_run
    env = {"GEOFM_RUN_ROOT": str(root), "GEOFM_SYNTH_DIR": str(synth),
           "GEOFM_FINETUNE_OUT": str(tmp_path / "head"), "GEOFM_FINETUNE_EPOCHS": "2"}
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    nb = execute(path, tmp_path, env)
    errors = [o for c in nb.cells if c.cell_type == "code"  # type: ignore[attr-defined]
              for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    assert _images(nb) >= 2, f"{path.name} drew fewer than 2 figures"
    # Notebooks only read the run root.
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert not (tmp_path / "notebook-run").exists()


@pytest.mark.slow
def test_a_failing_cell_fails_the_run(notebook_run: tuple[Path, Path], tmp_path: Path) -> None:
    import nbformat
    from nbclient.exceptions import CellExecutionError

    broken = tmp_path / "broken.ipynb"
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell("raise ValueError('cell 1 is broken')"))
    nbformat.write(nb, broken)
    root, synth = notebook_run
    with pytest.raises(CellExecutionError, match="cell 1 is broken"):
        execute(broken, tmp_path, {"GEOFM_RUN_ROOT": str(root), "GEOFM_SYNTH_DIR": str(synth)})
