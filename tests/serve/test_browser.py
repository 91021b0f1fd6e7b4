"""End to end: the app in a real headless Chromium (the system's, driven by Playwright).

One browser for the session; each test gets a fresh page that records JavaScript errors
(``pageerror``, console errors) and every URL it requests, and fails on any error or on
a request to another host (the app must work offline). Screenshots go to ``tmp_path``;
set ``GEOFM_UPDATE_SCREENSHOTS=1`` to also refresh ``docs/serve.png``.

Skipped, with the reason, only when no Chromium is installed (``make browser``).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from geofm.search import search
from geofm.serve.data import search_options

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
#: flags for a headless Chromium in a container: no sandbox (root), no GPU, no network
#: chatter of its own (updates, sync, QUIC), so every request it makes is the app's.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def chromium_path() -> str | None:
    """The system Chromium: ``$GEOFM_CHROMIUM``, ``chromium`` on PATH, /usr/bin/chromium."""
    for candidate in (os.environ.get("GEOFM_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless system Chromium for the whole session (never a downloaded one)."""
    path = chromium_path()
    if path is None:
        pytest.skip("no system Chromium: run `make browser` (apt-get install chromium) to "
                    "run the browser tests of geofm serve")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Session:
    """A page and what it reported."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def open(self, path: str = "") -> None:
        """Load ``base + path`` and wait until the map has drawn its first tiles."""
        self.page.goto(self.base + path)
        self.page.wait_for_selector("body[data-ready='1']")

    def check(self) -> None:
        """No JavaScript error, and nothing requested from another host."""
        assert self.errors == []
        foreign = [u for u in self.requests if not u.startswith(self.base)
                   and not u.startswith("data:")]
        assert foreign == []

    def map_pixel(self, chip_id: str) -> tuple[int, int, int]:
        """RGB of the map (as rendered) at the centre of ``chip_id``'s footprint."""
        from PIL import Image

        point = self.page.evaluate("""(id) => {
            const s = geofm.state; const i = s.layer.position.get(id);
            const ll = s.layer.latlngs(i);
            const lat = ll.reduce((a, p) => a + p[0], 0) / 4;
            const lng = ll.reduce((a, p) => a + p[1], 0) / 4;
            const pt = geofm.map.latLngToContainerPoint([lat, lng]);
            return [pt.x, pt.y];
        }""", chip_id)
        png = self.page.locator("#map").screenshot()
        rgb = Image.open(io.BytesIO(png)).convert("RGB").getpixel(
            (round(point[0]), round(point[1])))
        return tuple(rgb)  # type: ignore[return-value]

    def chip_point(self, chip_id: str) -> tuple[float, float]:
        """Page coordinates of the centre of ``chip_id`` on the map."""
        box = self.page.locator("#map").bounding_box()
        x, y = self.page.evaluate("""(id) => {
            const s = geofm.state; const ll = s.layer.latlngs(s.layer.position.get(id));
            const pt = geofm.map.latLngToContainerPoint(
                [ll.reduce((a, p) => a + p[0], 0) / 4, ll.reduce((a, p) => a + p[1], 0) / 4]);
            return [pt.x, pt.y];
        }""", chip_id)
        return box["x"] + x, box["y"] + y

    def click_chip(self, chip_id: str, *, shift: bool = False) -> None:
        """Click the centre of ``chip_id`` on the map (with shift held if asked)."""
        x, y = self.chip_point(chip_id)
        if shift:
            self.page.keyboard.down("Shift")
        self.page.mouse.click(x, y)
        if shift:
            self.page.keyboard.up("Shift")


def _session(browser: Any, base: str) -> Iterator[Session]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    session = Session(page=page, base=base)
    page.on("pageerror", lambda exc: session.errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: session.errors.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("request", lambda req: session.requests.append(req.url))
    yield session
    context.close()


@pytest.fixture
def app(browser: Any, server: Any) -> Iterator[Session]:
    """A fresh page on the app over the complete run."""
    yield from _session(browser, server.url)


@pytest.fixture
def bare_app(browser: Any, bare_server: Any) -> Iterator[Session]:
    """A fresh page on the app over the run without analysis and index."""
    yield from _session(browser, bare_server.url)


def _changes(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "analysis" / "changes.parquet").set_index("chip_id")


def test_home_lists_the_changed_chips_and_draws_them(app, served_root, changed_chips, tmp_path):
    app.open()
    page = app.page
    rows = page.locator("#changes-table tbody tr")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.chip)")) == changed_chips
    changes = _changes(served_root)
    for cid in changed_chips:
        text = page.locator(f"#changes-table tr[data-chip='{cid}']").inner_text()
        assert f"{changes.loc[cid, 'change_date']:%Y-%m-%d}" in text
    counts = page.locator("#counts").inner_text()
    assert "24 scenes" in counts and "9 chips" in counts
    assert f"{len(changed_chips)} changed chips" in counts
    assert "RANDOM WEIGHTS" in page.locator("#model.random-weights").inner_text()
    # sortable: by change date, ascending then descending
    page.click("#changes-table th[data-key='change_date']")
    dates = rows.evaluate_all("rs => rs.map(r => r.children[1].textContent)")
    assert dates == sorted(dates)
    page.click("#changes-table th[data-key='change_date']")
    assert rows.evaluate_all("rs => rs.map(r => r.children[1].textContent)") == sorted(
        dates, reverse=True)
    # the canvas layer draws each chip in its status colour
    r, g, b = app.map_pixel(changed_chips[0])
    assert r > 170 and g < 130 and b < 120, (r, g, b)  # change: red
    calm = changes.index[changes["status"] == "no change"][0]
    r, g, b = app.map_pixel(calm)
    assert b > r + 60, (r, g, b)  # no change: blue
    page.screenshot(path=str(tmp_path / "home.png"))
    # second colouring: by change date (a viridis colour, not the status red)
    page.select_option("#colour-by", "date")
    page.wait_for_timeout(300)
    assert "change date" in page.locator("#legend").inner_text()
    r, g, b = app.map_pixel(changed_chips[0])
    assert not (r > 170 and g < 130), (r, g, b)
    assert (tmp_path / "home.png").stat().st_size > 10_000
    app.check()


def test_chip_page_shows_timeline_thumbnails_and_similar_chips(app, served_root, changed_chips,
                                                               tmp_path):
    cid = changed_chips[0]
    app.open(f"?chip={cid}")
    page = app.page
    page.wait_for_selector(f"#similar[data-loaded='{cid}']")
    assert cid in page.locator("#chip-title").inner_text()
    ts = pd.read_parquet(served_root / "analysis" / "timeseries.parquet")
    n_obs = int((ts["chip_id"] == cid).sum())
    assert page.locator("#timeline circle.obs").count() == n_obs
    assert page.locator("#timeline line.change").count() == 1
    assert page.locator("#timeline polygon.band").count() == 1
    change_day = f"{_changes(served_root).loc[cid, 'change_date']:%Y-%m-%d}"
    assert f"change {change_day}" in page.locator("#timeline").text_content()
    page.wait_for_function("""() => [...document.querySelectorAll('#before-after img')]
        .every(img => img.complete && img.naturalWidth > 0)""")
    assert page.locator("#before-after img").count() == 2
    want = search(served_root, chip_ids=[cid], k=8, distinct=True)
    shown = page.locator("#similar .thumb").evaluate_all("ts => ts.map(t => t.dataset.chip)")
    assert shown == list(want["chip_id"])
    grid = page.locator("#similar").inner_text()
    assert all(c in grid for c in want["chip_id"])
    sims = page.locator("#similar .thumb b").evaluate_all("bs => bs.map(b => +b.textContent)")
    assert sims == pytest.approx(list(want["similarity"]), abs=1e-4)
    # the selected chip and its similar chips are outlined on the map; hovering one
    # names its rank
    assert page.locator(".leaflet-overlay-pane path").count() == 1 + len(want)
    page.mouse.move(*app.chip_point(want["chip_id"].iloc[0]))
    page.wait_for_function("(id) => document.getElementById('map').title.startsWith(id)",
                           arg=want["chip_id"].iloc[0])
    assert "similar #1" in page.get_attribute("#map", "title")
    assert page.url.endswith(f"/?chip={cid}")
    page.screenshot(path=str(tmp_path / "chip.png"))
    if os.environ.get("GEOFM_UPDATE_SCREENSHOTS"):
        shutil.copy(tmp_path / "chip.png", REPO / "docs" / "serve.png")
    app.check()


def test_clicking_a_chip_opens_its_shareable_page(app, served_root, changed_chips):
    app.open()
    page = app.page
    other = next(c for c in _changes(served_root).index if c not in changed_chips)
    app.click_chip(other)
    page.wait_for_selector(f"#tab-chip[data-chip-loaded='{other}']")
    assert page.url.endswith(f"/?chip={other}")
    assert other in page.locator("#chip-title").inner_text()
    page.go_back()
    page.wait_for_selector("#tab-changes.active")
    assert urlsplit(page.url).query == ""
    app.check()


def test_search_from_two_chips_and_a_negative_matches_geofm_search(app, served_root,
                                                                   changed_chips, tmp_path):
    page = app.page
    calm = [c for c in _changes(served_root).index if c not in changed_chips]
    first, second, negative = changed_chips[0], calm[0], calm[1]
    app.open(f"?chip={first}")
    page.wait_for_selector(f"#tab-chip[data-chip-loaded='{first}']")
    page.click("#tab-chip button[data-action='query']")
    app.click_chip(second, shift=True)  # shift-click adds to the query
    page.evaluate("(id) => geofm.selectChip(id)", negative)
    page.wait_for_selector(f"#tab-chip[data-chip-loaded='{negative}']")
    page.click("#tab-chip button[data-action='negative']")
    page.click("#tab-btn-search")
    assert page.locator("#query-chips span").evaluate_all(
        "s => s.map(e => e.dataset.chip)") == [first, second]
    assert page.locator("#negative-chips span").evaluate_all(
        "s => s.map(e => e.dataset.chip)") == [negative]
    page.fill("#search-form input[name='k']", "3")
    page.check("#search-form input[name='in_view']")
    page.click("#search-run")
    page.wait_for_selector("#search-results[data-done]:not([data-done=''])")
    calls = [u for u in app.requests if "/api/search?" in u and "chip=" + first in u]
    params = parse_qs(urlsplit(calls[-1]).query, keep_blank_values=True)
    assert params["chip"] == [first, second] and params["neg"] == [negative]
    assert params["k"] == ["3"] and "bbox" in params
    want = search(served_root, **search_options(params))
    shown = page.locator("#search-results .thumb").evaluate_all(
        "ts => ts.map(t => t.dataset.chip)")
    assert shown == list(want["chip_id"]) and len(shown) == 3
    assert not set(shown) & {first, second, negative}
    assert "3 results" in page.locator("#search-status").inner_text()
    href = page.get_attribute("#search-download", "href")
    assert "format=geojson" in href
    fc = page.evaluate("(u) => fetch(u).then(r => r.json())", href)
    assert fc["type"] == "FeatureCollection"
    assert [f["properties"]["chip_id"] for f in fc["features"]] == shown
    page.screenshot(path=str(tmp_path / "search.png"))
    # a result opens its chip
    page.click(f"#search-results .thumb[data-chip='{shown[0]}']")
    page.wait_for_selector(f"#tab-chip[data-chip-loaded='{shown[0]}']")
    app.check()


def test_unknown_chip_and_missing_stages_are_explained(bare_app, bare_root):
    page = bare_app.page
    bare_app.open("?chip=33UUP_64_0000_0099")
    message = page.locator("#unknown-chip").inner_text()
    assert "33UUP_64_0000_0099" in message and "not a chip of this run" in message
    assert "Did you mean" in page.locator("#tab-chip").inner_text()
    notices = page.locator("#notices").inner_text()
    root = str(bare_root.resolve())
    assert f"geofm analyze --root {root}" in notices and f"geofm index --root {root}" in notices
    assert "No change analysis yet" in page.locator("#changes-summary").text_content()
    chip_id = page.evaluate("geofm.state.layer.ids[0]")
    page.evaluate("(id) => geofm.selectChip(id)", chip_id)
    page.wait_for_selector(f"#tab-chip[data-chip-loaded='{chip_id}']")
    panel = page.locator("#tab-chip").inner_text()
    assert "No timeline: run geofm analyze" in panel and "No search index: run" in panel
    page.click("#tab-chip button[data-action='search']")
    assert "No search index" in page.locator("#search-status").inner_text()
    bare_app.check()
    assert not any("/api/search" in u for u in bare_app.requests)


def test_app_requests_nothing_but_its_own_server(app):
    app.open()
    app.page.wait_for_timeout(200)
    paths = {urlsplit(u).path for u in app.requests}
    assert {"/", "/static/app.js", "/static/vendor/leaflet/leaflet.js", "/api/run",
            "/api/chips", "/api/chips/footprints.bin"} <= paths
    app.check()
