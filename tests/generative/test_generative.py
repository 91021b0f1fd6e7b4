"""``geofm.generative.generate_for_hits``: the library API over search hits."""

import pytest
from botocore.stub import Stubber

from geofm.exceptions import GenerationError, GeofmValueError, GeofmWarning, TemplateError
from geofm.generative import generate_for_hits, make_provider
from geofm.generative.providers import OpenAIProvider, _aws_client
from geofm.search import search

from .conftest import prompt_images, prompt_text
from .test_providers import MODEL, _converse_response, aws_env  # noqa: F401

QUERY = "33UUP_64_0001_0002"


@pytest.fixture(scope="module")
def hits(indexed_root):
    return search(indexed_root, chip_ids=[QUERY], k=6)


def test_single_prompt_one_call_per_hit_hits_unchanged(hits, server):
    before = hits.copy()
    provider = OpenAIProvider(base_url=server.base_url, model="m")
    gen = generate_for_hits(hits, provider=provider, single_prompt="Hit {rank}: {chip_id}")
    assert gen.grouped is None and len(gen.single) == 6
    assert [prompt_text(r["body"]) for r in server.requests] == [
        f"Hit {i}: {c}" for i, c in enumerate(hits["chip_id"], 1)]
    assert gen.single == ["ANSWER to: " + prompt_text(r["body"]) for r in server.requests]
    assert hits.equals(before) and "generated" not in hits.columns
    assert (gen.provider, gen.model) == ("openai", "m")


def test_template_checked_against_the_hits_before_any_call(hits, server):
    provider = OpenAIProvider(base_url=server.base_url, model="m")
    with pytest.raises(TemplateError, match="unknown placeholder {nir}"):
        generate_for_hits(hits, provider=provider, single_prompt="{nir}")
    assert server.requests == []


def test_grouped_without_images_sends_text_only(hits, server):
    provider = OpenAIProvider(base_url=server.base_url, model="m")
    gen = generate_for_hits(hits, provider=provider, grouped_task="Common traits?")
    body = server.requests[0]["body"]
    assert isinstance(body["messages"][0]["content"], str)
    assert all(c in prompt_text(body) for c in hits["chip_id"])
    assert gen.grouped_hits == 6 and gen.single is None


def test_grouped_cap_and_image_cap(indexed_root, hits, server):
    provider = OpenAIProvider(base_url=server.base_url, model="m")
    with pytest.warns(GeofmWarning) as record:
        gen = generate_for_hits(hits, provider=provider, grouped_task="T", root=indexed_root,
                                with_images=True, max_hits=4, max_images=2)
    messages = " | ".join(str(w.message) for w in record)
    assert "best 4 of 6 hits (max_hits=4)" in messages and "best 2 hits only" in messages
    body = server.requests[0]["body"]
    text = prompt_text(body)
    assert all(c in text for c in hits["chip_id"][:4])
    assert "\n[4] " in text and "\n[5] " not in text
    assert len(prompt_images(body)) == 2 and gen.grouped_hits == 4


def test_prompt_too_large_is_refused_before_any_call(hits, server):
    provider = OpenAIProvider(base_url=server.base_url, model="m")
    with pytest.raises(GenerationError, match="over max_prompt_tokens=5") as info:
        generate_for_hits(hits, provider=provider, single_prompt="Describe {chip_id} " * 5,
                          max_prompt_tokens=5)
    assert info.value.reason == "prompt_too_large" and server.requests == []
    with pytest.raises(GenerationError, match="grouped prompt is about"):
        generate_for_hits(hits, provider=provider, grouped_task="x" * 400, max_prompt_tokens=50)
    assert server.requests == []


def test_failure_keeps_what_was_generated(hits, server):
    calls = []

    def reply(body):
        calls.append(1)
        if len(calls) == 3:
            return 400, {"error": "bad"}, {}
        return 200, {"choices": [{"message": {"content": f"ok {len(calls)}"}}]}, {}

    server.reply = reply
    provider = OpenAIProvider(base_url=server.base_url, model="m", retries=0)
    with pytest.raises(GenerationError) as info:
        generate_for_hits(hits, provider=provider, single_prompt="{chip_id}",
                          grouped_task="never sent")
    partial = info.value.partial
    assert partial.single == ["ok 1", "ok 2", None, None, None, None]
    assert partial.grouped is None and len(server.requests) == 3


def test_images_need_the_root(hits, server):
    provider = OpenAIProvider(base_url=server.base_url, model="m")
    with pytest.raises(GeofmValueError, match="needs the run root"):
        generate_for_hits(hits, provider=provider, grouped_task="x", with_images=True)
    with pytest.raises(GeofmValueError, match="single prompt"):
        generate_for_hits(hits, provider=provider)


def test_bedrock_grouped_with_thumbnails_exact_request(indexed_root, hits, aws_env):  # noqa: F811
    from geofm.generative.prompts import grouped_prompt, hit_properties
    from geofm.generative.providers import ImagePart

    client = _aws_client("bedrock-runtime", region="us-east-1", profile=None, provider="b",
                         model=MODEL)
    provider = make_provider("bedrock", model=MODEL, temperature=0.1, max_tokens=300,
                             client=client)
    top = hits.head(2)
    thumbs = [(indexed_root / p).read_bytes() for p in top["thumbnail_path"]]
    assert thumbs[0] != thumbs[1]
    prompt, _ = grouped_prompt("Compare", hit_properties(top),
                               images=[ImagePart(t) for t in thumbs])
    content = [{"text": p} if isinstance(p, str) else
               {"image": {"format": "png", "source": {"bytes": p.png}}} for p in prompt.parts]
    assert [c["image"]["source"]["bytes"] for c in content if "image" in c] == thumbs
    assert content[0]["text"].startswith("Compare")
    assert all(c in "".join(x.get("text", "") for x in content) for c in top["chip_id"])
    expected = {"modelId": MODEL, "messages": [{"role": "user", "content": content}],
                "inferenceConfig": {"maxTokens": 300, "temperature": 0.1}}
    with Stubber(client) as stub:
        stub.add_response("converse", _converse_response("they are fields"), expected)
        gen = generate_for_hits(top, provider=provider, grouped_task="Compare",
                                root=indexed_root, with_images=True)
        stub.assert_no_pending_responses()
    assert gen.grouped == "they are fields" and gen.grouped_hits == 2
