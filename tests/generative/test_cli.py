"""``geofm search`` with generative answers against a real local chat-completions server."""

import base64
import json

from geofm.cli import main

from .conftest import png_bytes, prompt_images, prompt_text

QUERY = "33UUP_64_0001_0002"


def _search(root, server, *extra):
    return ["search", "--root", str(root), "--chip-id", QUERY, "--k", "5",
            "--generative-provider", "openai", "--generative-base-url", server.base_url,
            "--generative-model", "M", "--format", "json", *extra]


def test_grouped_task_acceptance(indexed_root, server, capsys):
    code = main(_search(indexed_root, server, "--grouped-task", "Summarise"))
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert len(server.requests) == 1
    seen = server.requests[0]
    assert seen["path"] == "/v1/chat/completions" and seen["body"]["model"] == "M"
    text = prompt_text(seen["body"])
    assert text.startswith("Summarise")
    assert len(out["results"]) == 5
    for hit in out["results"]:
        assert hit["chip_id"] in text
        assert "generated" not in hit
    assert out["grouped"] == ("ANSWER to: " + text).strip()


def test_single_prompt_acceptance(indexed_root, server, capsys):
    code = main(_search(indexed_root, server, "--single-prompt", "Describe {chip_id} on {date}"))
    hits = json.loads(capsys.readouterr().out)
    assert code == 0 and len(hits) == 5
    assert len(server.requests) == 5
    prompts = [prompt_text(r["body"]) for r in server.requests]
    for hit, prompt in zip(hits, prompts, strict=True):
        assert prompt == f"Describe {hit['chip_id']} on {hit['date'][:10]}"
        assert hit["generated"] == "ANSWER to: " + prompt


def test_single_and_grouped_together_and_search_results_unchanged(indexed_root, server, capsys):
    main(["search", "--root", str(indexed_root), "--chip-id", QUERY, "--k", "5",
          "--format", "json"])
    plain = json.loads(capsys.readouterr().out)
    code = main(_search(indexed_root, server, "--single-prompt", "{rank}: {chip_id}",
                        "--grouped-task", "What do these have in common?"))
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(server.requests) == 6
    assert [{k: v for k, v in h.items() if k != "generated"} for h in out["results"]] == plain
    assert [h["generated"] for h in out["results"]] == [
        f"ANSWER to: {i}: {h['chip_id']}" for i, h in enumerate(plain, 1)]


def test_unknown_placeholder_exits_2_before_any_call(indexed_root, server, cli_log):
    code = main(_search(indexed_root, server, "--single-prompt", "Describe {chip} please"))
    err = cli_log()
    assert code == 2
    assert "unknown placeholder {chip}" in err
    for name in ("{chip_id}", "{date}", "{similarity}", "{cloud_fraction}", "{lon}", "{lat}",
                 "{change_status}", "{change_date}", "{scene_id}"):
        assert name in err
    assert server.requests == []


def test_missing_provider_option_exits_2(indexed_root, cli_log):
    code = main(["search", "--root", str(indexed_root), "--chip-id", QUERY,
                 "--grouped-task", "x", "--generative-provider", "openai",
                 "--generative-model", "M"])
    assert code == 2
    assert "needs --generative-base-url URL" in cli_log()


def test_failed_generation_prints_hits_and_exits_1(indexed_root, server, capsys, cli_log):
    server.reply = lambda body: (400, {"error": {"message": "prompt rejected by policy"}}, {})
    code = main(_search(indexed_root, server, "--grouped-task", "Summarise"))
    out = json.loads(capsys.readouterr().out)
    err = cli_log()
    assert code == 1
    assert len(out["results"]) == 5 and out["grouped"] is None
    assert "openai model 'M'" in err and "request refused (HTTP 400)" in err
    assert "prompt rejected by policy" in err


def test_with_images_sends_each_hits_thumbnail(indexed_root, server, capsys):
    code = main(_search(indexed_root, server, "--grouped-task", "Compare", "--with-images"))
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    urls = prompt_images(server.requests[0]["body"])
    assert len(urls) == 5
    for url, hit in zip(urls, out["results"], strict=True):
        data = base64.b64decode(url.removeprefix("data:image/png;base64,"))
        assert data == (indexed_root / hit["thumbnail_path"]).read_bytes()
    assert urls[0] != urls[1] or png_bytes(0) == png_bytes(1)


def test_table_and_geojson_carry_the_text(indexed_root, server, capsys):
    args = _search(indexed_root, server, "--single-prompt", "Say {chip_id}",
                   "--grouped-task", "Sum")
    code = main([a if a != "json" else "table" for a in args])
    table = capsys.readouterr().out
    assert code == 0
    assert "Generated (one per result):" in table and "Grouped answer (5 results):" in table
    assert "ANSWER to: Say 33UUP_64_" in table and "ANSWER to: Sum" in table
    code = main([a if a != "json" else "geojson" for a in args])
    fc = json.loads(capsys.readouterr().out)
    assert code == 0 and fc["type"] == "FeatureCollection"
    assert fc["grouped"].startswith("ANSWER to: Sum")
    for feature in fc["features"]:
        assert feature["properties"]["generated"] == \
            f"ANSWER to: Say {feature['properties']['chip_id']}"


def test_generative_flags_need_a_prompt(indexed_root, cli_log):
    code = main(["search", "--root", str(indexed_root), "--chip-id", QUERY,
                 "--generative-provider", "openai"])
    assert code == 2
    assert "needs --single-prompt or --grouped-task" in cli_log()


def test_missing_thumbnail_prints_hits_and_exits_1(indexed_root, server, tmp_path, capsys,
                                                    cli_log):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(indexed_root, root)
    shutil.rmtree(root / "thumbnails")
    code = main(_search(root, server, "--grouped-task", "Compare", "--with-images"))
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and len(out["results"]) == 5 and out["grouped"] is None
    assert "drop --with-images" in cli_log() and server.requests == []
