"""End to end on ``geofm synth`` data embedded by a random-weight ``tiny`` encoder."""

import collections
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from geofm.exceptions import GeofmWarning
from geofm.index import build_index
from geofm.layout import RunRoot
from geofm.search import search


@pytest.mark.slow
def test_index_and_search_the_shared_embedded_root(embedded_root, writable_copy):
    root = writable_copy(embedded_root)
    record = build_index(root)
    assert record.counts["added"] == record.counts["table_rows"] > 0
    assert build_index(root).counts["added"] == 0
    cons = pd.read_parquet(RunRoot.of(root).consolidated_path)
    query = cons["chip_id"].iat[0]
    res = search(root, chip_ids=[query], k=100, centre=True)
    assert query not in set(res["chip_id"])
    assert len(res) == (cons["chip_id"] != query).sum()


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    from geofm.chip import chip
    from geofm.embed import embed
    from geofm.synth import synthesize

    base = tmp_path_factory.mktemp("accept")
    synth = synthesize(base / "s2", seed=0, size=512, n_dates=1, start="2021-06-01",
                       n_events=0, chip_size=64)
    root = base / "root"
    chip(synth / "items", root, chip_size=64, max_cloud=0.05, progress=False)
    with warnings.catch_warnings():
        # only the random-weights warning of the tiny encoder is expected here
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=GeofmWarning)
        embed(root, model="tiny", batch_size=32, progress=False)
    truth = json.loads((synth / "truth.json").read_text())
    size = truth["chip_size"]
    classes = {f"{c['tile']}_{size}_{c['row']:04d}_{c['col']:04d}": c["class"]
               for c in truth["cells"]}
    return root, classes


def _precision(root, classes, **options):
    ids = sorted(set(pd.read_parquet(RunRoot.of(root).consolidated_path)["chip_id"]))
    counts = collections.Counter(classes[i] for i in ids)
    per_class = collections.defaultdict(list)
    for chip_id in ids:
        if counts[classes[chip_id]] < 10:
            continue
        res = search(root, chip_ids=[chip_id], k=10, **options)
        per_class[classes[chip_id]].append(
            np.mean([classes[c] == classes[chip_id] for c in res["chip_id"]]))
    chance = np.mean([counts[c] / len(ids) for c in per_class])
    return float(np.mean([np.mean(v) for v in per_class.values()])), float(chance)


@pytest.mark.slow
def test_same_class_precision_at_10_random_tiny_encoder(synth_run):
    """Top-10 same-class precision >= 0.9, averaged over classes with >= 10 chips.

    512 px synth scene, 64 px chips (64 cells), one acquisition, default settings (cls,
    not centred): measured 0.928. Centring lowers it here (0.76), and with 32 px chips
    the same encoder reaches only about 0.65: see benchmarks/results/search.md.
    """
    root, classes = synth_run
    build_index(root)
    precision, chance = _precision(root, classes)
    assert precision >= 0.9, f"same-class precision@10 {precision:.3f} < 0.9"
    assert chance < 0.6
