"""``geofm index --describe``: cached descriptions, full-text index, hybrid search."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from geofm.cli import main
from geofm.exceptions import SearchIndexError
from geofm.generative.describe import DescribeRequest, describe_chips, read_descriptions
from geofm.generative.providers import OpenAIProvider
from geofm.layout import RunRoot
from geofm.search import search

from .conftest import prompt_text

LAKE_CHIP = "33UUP_64_0000_0003"


def describer(body):
    """Row 0: forest (col 3: a forest lake), row 1: open water lake, row 2: urban."""
    chip_id = prompt_text(body).split()[-1]
    row = int(chip_id.split("_")[2])
    text = {0: "dense forest", 1: "open water lake", 2: "urban buildings and roads"}[row]
    if chip_id == LAKE_CHIP:
        text = "forest lake"
    return 200, {"choices": [{"message": {"content": text}}]}, {}


def _index_args(root, server, *extra):
    return ["index", "--root", str(root), "--describe", "Describe {chip_id}",
            "--generative-provider", "openai", "--generative-base-url", server.base_url,
            "--generative-model", "M", *extra]


@pytest.fixture
def described(indexed_root, server, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(indexed_root, root)
    server.reply = describer
    assert main(_index_args(root, server)) == 0
    return root


def test_describe_once_per_chip_then_cached(described, server):
    chips = {prompt_text(r["body"]).split()[-1] for r in server.requests}
    assert len(server.requests) == 12 == len(chips)  # 3 x 4 chips, not 36 acquisitions
    cache = read_descriptions(RunRoot.of(described))
    assert len(cache) == 12 and set(cache["chip_id"]) == chips
    assert cache.loc[cache["chip_id"] == LAKE_CHIP, "description"].item() == \
        "forest lake"
    server.requests.clear()
    assert main(_index_args(described, server)) == 0
    assert server.requests == []
    run = json.loads((described / "run.json").read_text())
    assert run["stages"]["index"]["counts"]["cached"] == 12
    assert run["stages"]["index"]["counts"]["described"] == 0


def test_another_prompt_is_described_again(described, server):
    server.requests.clear()
    args = _index_args(described, server)
    args[args.index("--describe") + 1] = "What is at {chip_id}"
    assert main(args) == 0
    assert len(server.requests) == 12
    assert len(read_descriptions(RunRoot.of(described))) == 24


def test_full_text_search_alone(described):
    res = search(described, text="lake", k=50, distinct=True)
    expected = {f"33UUP_64_0001_{c:04d}" for c in range(4)} | {LAKE_CHIP}
    assert set(res["chip_id"]) == expected
    assert res["similarity"].isna().all()
    assert list(res["score"]) == sorted(res["score"], reverse=True)
    assert set(res["description"]) == {"open water lake", "forest lake"}


def test_hybrid_fuses_text_and_vector_rankings(described):
    query = "33UUP_64_0000_0001"
    res = search(described, chip_ids=[query], text="lake", k=33)  # every row but the query's
    assert len(res) == 33 and query not in set(res["chip_id"])
    matches = {f"33UUP_64_0001_{c:04d}" for c in range(4)} | {LAKE_CHIP}
    # rows found by both the text and the vector query come first ...
    assert set(res["chip_id"].iloc[:15]) == matches
    # ... led by the one that is near the query vector and matches the text best
    assert set(res["chip_id"].iloc[:3]) == {LAKE_CHIP}
    # then rows found by the vector query only, by similarity
    rest = res.iloc[15:]
    assert not set(rest["chip_id"]) & matches
    assert list(rest["similarity"]) == sorted(rest["similarity"], reverse=True)
    assert list(res["score"]) == sorted(res["score"], reverse=True)
    exact = search(described, chip_ids=[query], k=33).set_index(["chip_id", "scene_id"])
    for _, row in res.iterrows():  # similarity is still the cosine to the query vector
        assert row["similarity"] == pytest.approx(
            exact.loc[(row["chip_id"], row["scene_id"]), "similarity"], abs=1e-5)
    assert np.isfinite(res["similarity"]).all()


def test_text_search_filters_and_cli(described, capsys):
    res = search(described, text="water", k=50, start="2021-07-01", end="2021-07-01")
    assert len(res) == 4
    assert (res["date"] == pd.Timestamp("2021-07-01", tz="UTC")).all()
    code = main(["search", "--root", str(described), "--text", "urban", "--k", "3",
                 "--format", "json"])
    hits = json.loads(capsys.readouterr().out)
    assert code == 0 and len(hits) == 3
    assert all(h["chip_id"].startswith("33UUP_64_0002_") for h in hits)
    assert all(h["description"] == "urban buildings and roads" for h in hits)


def test_text_search_without_descriptions(indexed_root):
    with pytest.raises(SearchIndexError, match="no full-text index.*--describe"):
        search(indexed_root, text="lake")


def test_plain_reindex_keeps_descriptions(described, server):
    from geofm.index import build_index

    build_index(described)
    assert len(search(described, text="lake", k=50)) == 15


def test_describe_failure_is_recorded_and_exit_1(indexed_root, server, tmp_path, cli_log):
    root = tmp_path / "root"
    shutil.copytree(indexed_root, root)
    server.reply = lambda body: (403, {"error": "no key"}, {})
    assert main(_index_args(root, server)) == 1
    assert len(server.requests) == 1  # stops at the first failed call
    run = json.loads((root / "run.json").read_text())
    failures = run["stages"]["index"]["failures"]
    assert len(failures) == 1 and "GEOFM_OPENAI_API_KEY" in json.dumps(failures)
    assert "GEOFM_OPENAI_API_KEY" in cli_log()


def test_describe_unknown_placeholder_exit_2(indexed_root, server, cli_log):
    args = _index_args(indexed_root, server)
    args[args.index("--describe") + 1] = "Describe {similarity}"
    assert main(args) == 2
    assert "unknown placeholder {similarity}" in cli_log()
    assert server.requests == []


def test_describe_with_images_library(indexed_root, server, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(indexed_root, root)
    request = DescribeRequest(prompt="Describe {chip_id}", with_images=True,
                              provider=OpenAIProvider(base_url=server.base_url, model="v"))
    server.reply = describer
    counts = describe_chips(root, request)
    assert counts == {"described": 12, "cached": 0, "failed": 0}
    assert all(len(r["body"]["messages"][0]["content"]) == 2 for r in server.requests)


def test_describe_from_a_mapping_as_in_pipeline_yaml(indexed_root, server, tmp_path):
    from geofm.exceptions import GeofmValueError, TemplateError
    from geofm.index import build_index

    root = tmp_path / "root"
    shutil.copytree(indexed_root, root)
    server.reply = describer
    options = {"prompt": "Describe {chip_id}", "provider": "openai",
               "base_url": server.base_url, "model": "M"}
    record = build_index(root, describe=options)
    assert record.counts["described"] == 12 and not record.failures
    assert record.extra["describe"]["model"] == "M"
    with pytest.raises(GeofmValueError, match="needs a 'prompt' string"):
        build_index(root, describe={"provider": "openai"})
    with pytest.raises(GeofmValueError, match="unexpected keyword argument 'colour'"):
        build_index(root, describe={**options, "colour": "red"})
    with pytest.raises(TemplateError, match="unknown placeholder {nir}"):
        build_index(root, describe={**options, "prompt": "{nir}"})
    assert len(server.requests) == 12
