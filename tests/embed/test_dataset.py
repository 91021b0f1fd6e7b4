from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geofm.exceptions import GeofmValueError, RasterError
from geofm.layout import RunRoot
from geofm.model.chips import (
    ChipDataset,
    ChipTask,
    batch_indices,
    collate,
    iter_tasks,
    load_chip,
    read_scene_plan,
)


def _task(scene: str, chip: str, bands=("blue", "green"), sensor="sentinel-2-l2a",
          path: str = "/nonexistent.nc") -> ChipTask:
    return ChipTask(scene_id=scene, chip_id=chip, position=0, path=path, sensor=sensor,
                    bands=bands, date=np.datetime64("2021-01-01T10:00"), lat=0.0, lon=0.0)


def test_plan_keeps_valid_chips_in_meta_order_with_lat_first_centroid(tiny_root: Path):
    rr = RunRoot(tiny_root)
    scene_id = rr.scene_ids(rr.meta_dir)[1]
    plan = read_scene_plan(rr, scene_id)
    # the meta file lists the invalid chip 0003 first; it is left out
    assert plan.chip_ids == ["33UUP_64_0000_0000", "33UUP_64_0000_0001", "33UUP_64_0000_0002"]
    assert plan.bands == ("blue", "green", "red", "nir")
    # footprint of chip c: lon [10 + c, 10.5 + c], lat [50, 50.4] -> centroid by hand
    for c, task in enumerate(plan.tasks):
        assert task.lat == pytest.approx(50.2) and task.lon == pytest.approx(10.25 + c)
        assert task.position == c and Path(task.path).exists()
    assert str(plan.dates[0]) == "2021-02-01T10:31:00.000000000"


def test_batches_cross_scenes_but_not_band_groups():
    tasks = [_task("a", "1"), _task("a", "2"), _task("b", "1"), _task("b", "2"),
             _task("c", "1", bands=("red",))]
    assert batch_indices(tasks, 3) == [[0, 1, 2], [3], [4]]
    assert batch_indices(tasks, 10) == [[0, 1, 2, 3], [4]]
    with pytest.raises(GeofmValueError, match="batch_size must be >= 1"):
        batch_indices(tasks, 0)


def test_iter_tasks_groups_by_bands(tiny_root: Path):
    rr = RunRoot(tiny_root)
    plans = [read_scene_plan(rr, s) for s in rr.scene_ids(rr.meta_dir)]
    plans[1].tasks = [_task("x", "1", bands=("red",))] + plans[1].tasks
    order = [(t.scene_id, t.bands) for t in iter_tasks(plans)]
    assert order[-1] == ("x", ("red",)) and len(order) == 10


def test_dataset_reports_unreadable_chip_and_collate_keeps_it_aside(tiny_root: Path):
    rr = RunRoot(tiny_root)
    plan = read_scene_plan(rr, rr.scene_ids(rr.meta_dir)[0])
    tasks = [*plan.tasks[:2], _task("s", "missing", bands=plan.bands)]
    ds = ChipDataset(tasks)
    batch = collate([ds[i] for i in range(3)])
    assert batch["indices"] == [0, 1] and tuple(batch["pixels"].shape) == (2, 4, 64, 64)
    assert batch["failed"][0][0] == 2 and "does not exist" in batch["failed"][0][1]
    with pytest.raises(GeofmValueError, match="max_invalid must be in"):
        ChipDataset(tasks, max_invalid=1.5)


def test_load_chip_rejects_too_many_invalid_pixels(tiny_root: Path):
    from geofm.chipfile import write_chip

    path = tiny_root / "c.nc"
    pixels = np.full((2, 8, 8), 500.0, np.float32)
    pixels[0, 0, :3] = np.nan  # 3 of 64 pixels = 4.7%
    write_chip(path, pixels, bands=["blue", "green"], x=np.arange(8.0), y=-np.arange(8.0),
               epsg=32633, date=np.datetime64("2021-01-01"))
    task = _task("s", "c", path=str(path))
    filled, invalid = load_chip(task)
    assert invalid == pytest.approx(3 / 64)
    # a pixel invalid in any band is filled in every band with the band means (DN)
    assert filled[0, 0, 0] == 1105.0 and filled[1, 0, 0] == 1355.0
    assert filled[1, 0, 3] == 500.0 and filled[0, 1, 0] == 500.0
    assert np.isfinite(filled).all()
    with pytest.raises(RasterError, match=r"4\.7% of its pixels are nodata or NaN"):
        load_chip(task, max_invalid=0.04)
