"""Templates, hit properties, grouped prompts and prompt-size accounting."""

import geopandas as gpd
import pandas as pd
import pytest
import shapely

from geofm.exceptions import GeofmFileNotFoundError, GeofmWarning, TemplateError
from geofm.generative.prompts import (
    IMAGE_TOKENS,
    check_template,
    estimate_tokens,
    fill_template,
    grouped_prompt,
    hit_properties,
    placeholders_of,
    thumbnail,
)
from geofm.generative.providers import ImagePart, Prompt
from geofm.layout import RunRoot

from .conftest import png_bytes


def _hits(n=3):
    return gpd.GeoDataFrame({
        "chip_id": [f"T_64_0000_{i:04d}" for i in range(n)],
        "date": [pd.Timestamp("2022-06-14 10:20:31", tz="UTC")] + [
            pd.Timestamp("2022-07-01", tz="UTC")] * (n - 1),
        "similarity": [0.98765, 0.5, 0.25][:n] + [0.1] * max(0, n - 3),
        "cloud_fraction": [0.0125] * n,
        "change_status": ["change"] + [None] * (n - 1),
        "change_date": [pd.Timestamp("2022-06-10", tz="UTC")] + [pd.NaT] * (n - 1),
        "thumbnail_path": [f"thumbnails/s/{i}.png" for i in range(n)],
        "geometry": [shapely.box(13.0 + i, 52.0, 13.1 + i, 52.1) for i in range(n)],
    }, geometry="geometry", crs=4326)


def test_fill_renders_each_kind_of_value():
    props = hit_properties(_hits())
    assert props[0]["rank"] == 1 and props[2]["rank"] == 3
    text = fill_template("{chip_id} {date} {similarity} {cloud_fraction} {lon} {lat} "
                         "{change_status} {change_date}", props[0])
    assert text == ("T_64_0000_0000 2022-06-14T10:20:31Z 0.9877 0.0125 13.05000 52.05000 "
                    "change 2022-06-10")
    assert fill_template("{change_status} {change_date} {date}", props[1]) == \
        "unknown unknown 2022-07-01"


def test_format_spec_and_literal_braces():
    props = hit_properties(_hits())[0]
    assert fill_template("{{x}} {similarity:.2f} {date:%d %B %Y}", props) == \
        "{x} 0.99 14 June 2022"


@pytest.mark.parametrize(("template", "bad"), [
    ("Describe {chip}", "chip"), ("{chip_id.upper}", "chip_id.upper"), ("{date[0]}", "date[0]"),
    ("{}", ""), ("{chip_id!r}", "chip_id"),
])
def test_bad_placeholders_list_the_available_ones(template, bad):
    available = placeholders_of(_hits())
    with pytest.raises(TemplateError, match="available placeholders: .*{chip_id}.*{lat}") as info:
        check_template(template, available)
    assert info.value.placeholder == bad
    assert {"chip_id", "date", "lon", "lat", "rank", "similarity"} <= set(info.value.available)


def test_unmatched_brace_is_a_template_error():
    with pytest.raises(TemplateError, match="unmatched braces"):
        check_template("Describe {chip_id", ["chip_id"])


def test_grouped_prompt_has_task_and_every_hit_and_images():
    props = hit_properties(_hits())
    images = [ImagePart(png_bytes(i), str(i)) for i in range(2)]
    prompt, n = grouped_prompt("Summarise", props, images=images)
    assert n == 3 and prompt.text.startswith("Summarise\n")
    for p in props:
        assert f"chip_id: {p['chip_id']}" in prompt.text
    assert "thumbnail_path" not in prompt.text and "change_status: unknown" not in prompt.text
    assert prompt.images == images
    # each image follows its hit's line
    parts = prompt.parts
    assert isinstance(parts[parts.index(images[0]) - 2], str)
    assert "T_64_0000_0000" in parts[parts.index(images[0]) - 2]


def test_grouped_prompt_drops_lowest_ranked_hits_over_budget():
    props = hit_properties(_hits(40))
    full, _ = grouped_prompt("T", props)
    budget = estimate_tokens(full) // 2
    with pytest.warns(GeofmWarning, match=r"carries \d+ of 40 hits"):
        prompt, n = grouped_prompt("T", props, max_prompt_tokens=budget)
    assert 1 <= n < 40 and estimate_tokens(prompt) <= budget
    assert props[n - 1]["chip_id"] in prompt.text and props[n]["chip_id"] not in prompt.text
    assert f"the first {n} of 40" in prompt.text


def test_estimate_tokens_counts_characters_and_images():
    assert estimate_tokens(Prompt(["abcd" * 10])) == 10
    assert estimate_tokens(Prompt(["abcde", ImagePart(png_bytes(0))])) == 2 + IMAGE_TOKENS


def test_thumbnail_missing_and_outside_root(tmp_path):
    root = RunRoot.of(tmp_path)
    with pytest.raises(GeofmFileNotFoundError, match="drop --with-images"):
        thumbnail(root, {"chip_id": "c", "thumbnail_path": "thumbnails/x.png"})
    with pytest.raises(GeofmFileNotFoundError, match="outside the run root"):
        thumbnail(root, {"chip_id": "c", "thumbnail_path": "../../etc/passwd"})
    with pytest.raises(GeofmFileNotFoundError, match="has no thumbnail_path"):
        thumbnail(root, {"chip_id": "c", "thumbnail_path": None})
