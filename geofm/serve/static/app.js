/* geofm serve: the map app. Plain JS (no build step) on the vendored Leaflet 1.9.
 *
 * Data (see geofm/serve/app.py): /api/run (summary), /api/chips (ids, status codes,
 * changed chips) + /api/chips/footprints.bin (float32 [N, 4, 2] lon/lat corners),
 * /api/chip?id= (one chip), /api/search?... (geofm.search.search).
 *
 * The chips are drawn by ChipCanvas, a Leaflet GridLayer whose canvas tiles draw the
 * chips of a spatial bin index (one Path2D per colour), so 100,000 footprints cost a
 * few milliseconds per tile instead of 100,000 Leaflet layers. Clicks and hovers are
 * answered by the same index (point in quadrilateral).
 */
(function () {
  "use strict";

  const STATUS_COLOURS = ["#2b8cbe", "#d7301f", "#9e9e9e", "#ffffff"];
  const STATUS_LABELS = ["no change", "change", "insufficient data", "not analysed"];
  const RAMP = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]; // viridis stops
  const RAMP_STEPS = 32;
  const OTHER_COLOUR = "#d0d0d0";
  const HIGHLIGHT = {
    selected: { color: "#ffd400", weight: 4, fill: false },
    similar: { color: "#ff7f00", weight: 2.5, dashArray: "5 3", fill: false },
    result: { color: "#c51b8a", weight: 2.5, fill: false },
    query: { color: "#00c8e0", weight: 3, fill: false },
    negative: { color: "#111111", weight: 2, dashArray: "2 3", fill: false },
  };
  const SIMILAR_K = 8;

  const state = {
    run: null, layer: null, selected: null, query: [], negatives: [],
    colourBy: "status", chipToken: 0, searchToken: 0, readyAt: null,
  };
  let map = null;
  let chipCanvas = null;
  const highlightGroups = {};
  const highlightLabels = {};

  // ---------------------------------------------------------------- helpers
  function $(selector, root) { return (root || document).querySelector(selector); }
  function esc(value) {
    return String(value == null ? "" : value).replace(/[&<>"']/g, (c) => (
      { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  async function getJSON(url) {
    const response = await fetch(url);
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }
  function fileUrl(rel) { return "/files/" + rel.split("/").map(encodeURIComponent).join("/"); }
  function day(iso) { return iso ? String(iso).slice(0, 10) : "–"; }
  function fixed(value, digits) { return value == null ? "–" : Number(value).toFixed(digits); }
  function statusClass(name) { return "status-" + String(name).replace(/ /g, "-"); }
  function badge(name) { return `<span class="badge ${statusClass(name)}">${esc(name)}</span>`; }
  /** Decimals that keep distinct similarities distinct (nearly parallel vectors). */
  function simDigits(values) {
    const distinct = new Set(values).size;
    let digits = 4;
    while (digits < 8 && new Set(values.map((v) => v.toFixed(digits))).size < distinct) digits++;
    return digits;
  }
  function mercX(lon) { return (lon + 180) / 360; }
  function mercY(lat) {
    const clamped = Math.max(-85.0511, Math.min(85.0511, lat));
    const s = Math.sin(clamped * Math.PI / 180);
    return 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI);
  }
  function hexToRgb(hex) {
    const v = parseInt(hex.slice(1), 16);
    return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
  }
  function rampColour(t) {
    const x = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x));
    const a = hexToRgb(RAMP[i]);
    const b = hexToRgb(RAMP[i + 1]);
    const f = x - i;
    return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
  }

  // ---------------------------------------------------------------- the chip layer
  /** Spatial index over the chips in Web Mercator world units (0..1). */
  function buildLayer(meta, buffer) {
    const n = meta.n;
    const corners = new Float32Array(buffer);
    if (corners.length !== n * 8) {
      throw new Error(`footprints.bin has ${corners.length / 8} chips, /api/chips ${n}`);
    }
    const mx = new Float64Array(n * 4);
    const my = new Float64Array(n * 4);
    const cx = new Float64Array(n);
    const cy = new Float64Array(n);
    const has = new Uint8Array(n);
    let pad = 0;
    let minX = Infinity; let minY = Infinity; let maxX = -Infinity; let maxY = -Infinity;
    for (let i = 0; i < n; i++) {
      let ok = true;
      let x0 = Infinity; let y0 = Infinity; let x1 = -Infinity; let y1 = -Infinity;
      for (let k = 0; k < 4; k++) {
        const lon = corners[i * 8 + 2 * k];
        const lat = corners[i * 8 + 2 * k + 1];
        if (!Number.isFinite(lon) || !Number.isFinite(lat)) { ok = false; break; }
        const x = mercX(lon); const y = mercY(lat);
        mx[i * 4 + k] = x; my[i * 4 + k] = y;
        if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
      }
      if (!ok) continue;
      has[i] = 1;
      cx[i] = (x0 + x1) / 2; cy[i] = (y0 + y1) / 2;
      pad = Math.max(pad, (x1 - x0) / 2, (y1 - y0) / 2);
      if (cx[i] < minX) minX = cx[i]; if (cx[i] > maxX) maxX = cx[i];
      if (cy[i] < minY) minY = cy[i]; if (cy[i] > maxY) maxY = cy[i];
    }
    const G = Math.max(1, Math.min(1024, Math.ceil(Math.sqrt(n / 8))));
    const spanX = Math.max(maxX - minX, 1e-12);
    const spanY = Math.max(maxY - minY, 1e-12);
    const binX = (x) => Math.max(0, Math.min(G - 1, Math.floor((x - minX) / spanX * G)));
    const binY = (y) => Math.max(0, Math.min(G - 1, Math.floor((y - minY) / spanY * G)));
    const counts = new Int32Array(G * G + 1);
    const bins = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      if (!has[i]) { bins[i] = -1; continue; }
      bins[i] = binY(cy[i]) * G + binX(cx[i]);
      counts[bins[i] + 1]++;
    }
    for (let b = 0; b < G * G; b++) counts[b + 1] += counts[b];
    const fill = counts.slice(0, G * G);
    const items = new Int32Array(counts[G * G]);
    for (let i = 0; i < n; i++) if (bins[i] >= 0) items[fill[bins[i]]++] = i;
    const position = new Map();
    meta.chip_ids.forEach((id, i) => position.set(id, i));
    const changeDay = new Float64Array(n).fill(NaN);
    for (const c of meta.changes) if (c.change_date) changeDay[c.i] = Date.parse(c.change_date);
    return {
      n, ids: meta.chip_ids, status: Uint8Array.from(meta.status), changes: meta.changes,
      corners, mx, my, has, pad, position, changeDay, colour: new Uint8Array(n), palette: [],
      empty: minX === Infinity,
      /** Call fn(i) for every chip whose centre lies within the box grown by the pad. */
      query(x0, y0, x1, y1, fn) {
        if (this.empty) return;
        const a = binX(x0 - pad); const b = binX(x1 + pad);
        const c = binY(y0 - pad); const d = binY(y1 + pad);
        if (x1 + pad < minX || x0 - pad > maxX || y1 + pad < minY || y0 - pad > maxY) return;
        for (let by = c; by <= d; by++) {
          for (let bx = a; bx <= b; bx++) {
            const bin = by * G + bx;
            for (let j = counts[bin]; j < counts[bin + 1]; j++) fn(items[j]);
          }
        }
      },
      latlngs(i) {
        const out = [];
        for (let k = 0; k < 4; k++) out.push([corners[i * 8 + 2 * k + 1], corners[i * 8 + 2 * k]]);
        return out;
      },
    };
  }

  function pointInQuad(layer, i, x, y) {
    let inside = false;
    for (let k = 0, j = 3; k < 4; j = k++) {
      const xk = layer.mx[i * 4 + k]; const yk = layer.my[i * 4 + k];
      const xj = layer.mx[i * 4 + j]; const yj = layer.my[i * 4 + j];
      if ((yk > y) !== (yj > y) && x < (xj - xk) * (y - yk) / (yj - yk) + xk) inside = !inside;
    }
    return inside;
  }

  function chipAt(latlng) {
    const layer = state.layer;
    if (!layer) return -1;
    const x = mercX(latlng.lng); const y = mercY(latlng.lat);
    let found = -1;
    layer.query(x, y, x, y, (i) => { if (found < 0 && pointInQuad(layer, i, x, y)) found = i; });
    return found;
  }

  /** Colour index per chip and the palette, for the current colouring. */
  function recolour() {
    const layer = state.layer;
    if (state.colourBy === "date" && layer.changes.length) {
      let lo = Infinity; let hi = -Infinity;
      for (const c of layer.changes) {
        const t = layer.changeDay[c.i];
        if (Number.isFinite(t)) { lo = Math.min(lo, t); hi = Math.max(hi, t); }
      }
      const palette = [];
      for (let s = 0; s < RAMP_STEPS; s++) palette.push(rampColour(s / (RAMP_STEPS - 1)));
      palette.push(OTHER_COLOUR, STATUS_COLOURS[3]);
      for (let i = 0; i < layer.n; i++) {
        const t = layer.changeDay[i];
        if (Number.isFinite(t)) {
          const f = hi > lo ? (t - lo) / (hi - lo) : 0.5;
          layer.colour[i] = Math.round(f * (RAMP_STEPS - 1));
        } else {
          layer.colour[i] = layer.status[i] === 3 ? RAMP_STEPS + 1 : RAMP_STEPS;
        }
      }
      layer.palette = palette;
      layer.dateRange = [lo, hi];
    } else {
      layer.palette = STATUS_COLOURS.slice();
      layer.colour.set(layer.status);
    }
  }

  function makeChipCanvas() {
    const ChipCanvas = L.GridLayer.extend({
      createTile(coords) {
        const tile = L.DomUtil.create("canvas", "leaflet-tile");
        const size = this.getTileSize();
        const ratio = window.devicePixelRatio || 1;
        tile.width = size.x * ratio; tile.height = size.y * ratio;
        const ctx = tile.getContext("2d");
        ctx.scale(ratio, ratio);
        drawTile(ctx, coords, size);
        return tile;
      },
    });
    return new ChipCanvas({ tileSize: 256, opacity: 0.85, updateWhenZooming: false,
                            maxZoom: 24, keepBuffer: 4 });
  }

  function drawTile(ctx, coords, size) {
    const layer = state.layer;
    const scale = size.x * Math.pow(2, coords.z);
    const ox = coords.x * size.x; const oy = coords.y * size.y;
    const palette = layer.palette;
    const paths = palette.map(() => new Path2D());
    const used = new Uint8Array(palette.length);
    const chipPx = layer.pad * 2 * scale;
    const tiny = chipPx < 2;
    layer.query(ox / scale, oy / scale, (ox + size.x) / scale, (oy + size.y) / scale, (i) => {
      const c = layer.colour[i];
      const p = paths[c];
      used[c] = 1;
      const b = i * 4;
      if (tiny) {  // sub-pixel chips: a 2 px dot at the centre keeps them visible
        const x = (layer.mx[b] + layer.mx[b + 2]) / 2 * scale - ox;
        const y = (layer.my[b] + layer.my[b + 2]) / 2 * scale - oy;
        p.rect(x - 1, y - 1, 2, 2);
        return;
      }
      p.moveTo(layer.mx[b] * scale - ox, layer.my[b] * scale - oy);
      for (let k = 1; k < 4; k++) p.lineTo(layer.mx[b + k] * scale - ox, layer.my[b + k] * scale - oy);
      p.closePath();
    });
    for (let c = 0; c < palette.length; c++) {
      if (!used[c]) continue;
      ctx.fillStyle = palette[c];
      ctx.fill(paths[c]);
      if (chipPx > 7) {
        ctx.strokeStyle = "rgba(0,0,0,0.45)";
        ctx.lineWidth = 0.6;
        ctx.stroke(paths[c]);
      }
    }
  }

  // ---------------------------------------------------------------- highlights
  /** Outline ``ids`` on the map as ``kind``; ``label(id, rank)`` joins the hover text. */
  function highlight(kind, ids, label) {
    const group = highlightGroups[kind];
    group.clearLayers();
    const labels = new Map();
    ids.forEach((id, rank) => {
      const i = state.layer.position.get(id);
      if (i === undefined || !state.layer.has[i] || labels.has(id)) return;
      labels.set(id, label ? label(id, rank) : kind);
      group.addLayer(L.polygon(state.layer.latlngs(i), { ...HIGHLIGHT[kind], interactive: false }));
    });
    highlightLabels[kind] = labels;
    if (highlightGroups.selected) highlightGroups.selected.bringToFront();
  }

  function chipBounds(ids) {
    const pts = [];
    for (const id of ids) {
      const i = state.layer.position.get(id);
      if (i !== undefined && state.layer.has[i]) pts.push(...state.layer.latlngs(i));
    }
    return pts.length ? L.latLngBounds(pts) : null;
  }

  function zoomTo(ids) {
    const bounds = chipBounds(ids);
    if (!bounds) return;
    const ne = bounds.getNorthEast(); const sw = bounds.getSouthWest();
    const grow = Math.max(ne.lat - sw.lat, ne.lng - sw.lng);  // one chip of context around
    map.fitBounds(L.latLngBounds([sw.lat - grow, sw.lng - grow], [ne.lat + grow, ne.lng + grow]),
                  { maxZoom: 17, animate: false });
  }

  // ---------------------------------------------------------------- header, notices
  function renderHeader() {
    const run = state.run;
    const name = $("#run-name");
    name.textContent = run.name;
    name.title = run.root;
    const c = run.counts;
    const items = [["scenes", c.scenes], ["chips", c.chips], ["changed chips", c.changed]];
    if (c.acquisitions != null) items.push(["valid acquisitions", c.acquisitions]);
    if (c.indexed != null) items.push(["indexed", c.indexed]);
    $("#counts").innerHTML = items.map(([k, v]) =>
      `<li data-count="${esc(k)}"><b>${esc(v == null ? "–" : v.toLocaleString("en"))}</b> ${esc(k)}</li>`).join("");
    const model = $("#model");
    if (!run.model) {
      model.textContent = "model: none (not embedded)";
    } else {
      const m = run.model;
      const what = m.checkpoint ? String(m.checkpoint).split("/").pop() : (m.preset || "?");
      model.textContent = run.random_weights
        ? `model: ${m.preset || "?"} · RANDOM WEIGHTS (not a trained model: similarities and changes only test the pipeline)`
        : `model: ${what}${m.sha256 ? " · sha256 " + String(m.sha256).slice(0, 12) : ""}`;
      model.classList.toggle("random-weights", !!run.random_weights);
      model.title = JSON.stringify(m, null, 1);
    }
    const notes = run.missing.map((m) =>
      `<p data-missing="${esc(m.stage)}"><b>${esc(m.stage)} not run</b>: ${esc(m.message)}. Run <code>${esc(m.command)}</code></p>`);
    $("#notices").innerHTML = notes.join("");
  }

  function notice(html) {
    const p = document.createElement("p");
    p.className = "error";
    p.innerHTML = html;
    $("#notices").appendChild(p);
  }

  // ---------------------------------------------------------------- tabs
  function showTab(name) {
    document.querySelectorAll(".tabs button").forEach((b) =>
      b.classList.toggle("active", b.dataset.tab === name));
    document.querySelectorAll(".tab").forEach((t) =>
      t.classList.toggle("active", t.id === "tab-" + name));
  }

  // ---------------------------------------------------------------- change panel
  const sortState = { key: "magnitude", dir: -1 };

  function renderChanges() {
    const layer = state.layer;
    const rows = layer.changes.slice();
    const { key, dir } = sortState;
    rows.sort((a, b) => {
      const va = a[key]; const vb = b[key];
      if (va == null && vb == null) return a.chip_id < b.chip_id ? -1 : 1;
      if (va == null) return 1;
      if (vb == null) return -1;
      if (va < vb) return -dir;
      if (va > vb) return dir;
      return a.chip_id < b.chip_id ? -1 : 1;
    });
    document.querySelectorAll("#changes-table th").forEach((th) => {
      th.setAttribute("aria-sort", th.dataset.key === key ? (dir > 0 ? "ascending" : "descending") : "none");
    });
    const summary = $("#changes-summary");
    if (!state.run.analysis) {
      summary.innerHTML = `No change analysis yet: run <code>${esc(state.run.missing.find((m) => m.stage === "analyze").command)}</code>.`;
    } else {
      summary.textContent = `${rows.length.toLocaleString("en")} changed chip${rows.length === 1 ? "" : "s"} of ${layer.n.toLocaleString("en")}; click one to open it.`;
    }
    $("#changes-table tbody").innerHTML = rows.map((r) =>
      `<tr data-chip="${esc(r.chip_id)}"${r.chip_id === state.selected ? ' class="selected"' : ""}>` +
      `<td class="cid">${esc(r.chip_id)}</td><td>${esc(r.change_date || "–")}</td>` +
      `<td class="num">${fixed(r.magnitude, 2)}</td></tr>`).join("");
  }

  // ---------------------------------------------------------------- chip page
  function closestIds(id, n) {
    const ids = state.layer.ids;
    const score = (c) => { let k = 0; while (k < c.length && k < id.length && c[k] === id[k]) k++; return k; };
    let best = [];
    for (const c of ids) {
      const s = score(c);
      if (best.length < n || s > best[best.length - 1][0]) {
        best.push([s, c]);
        best.sort((a, b) => b[0] - a[0]);
        if (best.length > n) best.pop();
      }
    }
    return best.filter((b) => b[0] > 0).map((b) => b[1]);
  }

  async function selectChip(id, { push = true, zoom = true } = {}) {
    const token = ++state.chipToken;
    const panel = $("#tab-chip");
    showTab("chip");
    if (push) history.pushState({ chip: id }, "", "?chip=" + encodeURIComponent(id));
    document.title = `${id} · geofm serve`;
    if (!state.layer.position.has(id)) {
      state.selected = null;
      highlight("selected", []);
      highlight("similar", []);
      const close = closestIds(id, 3);
      panel.dataset.chipLoaded = "";
      panel.innerHTML = `<p class="error" id="unknown-chip">Chip “${esc(id)}” is not a chip of this run.</p>` +
        (close.length ? `<p>Did you mean ${close.map((c) => `<a href="?chip=${encodeURIComponent(c)}" data-chip="${esc(c)}">${esc(c)}</a>`).join(", ")}?</p>` : "") +
        `<p class="hint">Pick a chip on the map or in the change list.</p>`;
      panel.dataset.unknown = id;
      return;
    }
    delete panel.dataset.unknown;
    state.selected = id;
    highlight("selected", [id], () => "open");
    renderChanges();
    if (zoom) zoomTo([id]);
    panel.dataset.chipLoaded = "";
    panel.innerHTML = `<h2>${esc(id)}</h2><p class="hint">loading…</p>`;
    let detail;
    try {
      detail = await getJSON("/api/chip?id=" + encodeURIComponent(id));
    } catch (error) {
      if (token === state.chipToken) panel.innerHTML = `<h2>${esc(id)}</h2><p class="error">${esc(error.message)}</p>`;
      return;
    }
    if (token !== state.chipToken) return;
    panel.innerHTML = renderChip(detail);
    panel.dataset.chipLoaded = id;
    loadSimilar(id, token);
  }

  function renderChip(d) {
    const thumbs = [["before", d.before], ["after", d.after]].map(([label, a]) => a
      ? `<figure><img src="${esc(fileUrl(a.thumbnail))}" alt="${esc(label)} ${esc(day(a.date))}" data-role="${label}"><figcaption>${label} · ${esc(day(a.date))}</figcaption></figure>`
      : `<figure><div class="noimg">no ${label} image</div></figure>`).join("");
    const m = d.meta;
    const valid = d.acquisitions.filter((a) => a.valid).length;
    const kv = [
      ["status", badge(d.status)],
      ["change date", esc(d.change_date || "–")],
      ["magnitude", fixed(d.magnitude, 3)],
      ["observations", esc(d.details.n_observations ?? "–") + (d.details.n_baseline != null ? ` (${esc(d.details.n_baseline)} baseline)` : "")],
      ["baseline rmse", fixed(d.details.rmse, 4)],
      ["acquisitions", `${valid} valid of ${d.acquisitions.length}`],
      ["tile · row · col", `${esc(m.tile ?? "–")} · ${esc(m.row ?? "–")} · ${esc(m.col ?? "–")}`],
      ["native bounds", m.minx != null ? `EPSG:${esc(m.epsg)} ${[m.minx, m.miny, m.maxx, m.maxy].map((v) => esc(Math.round(v))).join(", ")} m` : "–"],
      ["sensor · bands", `${esc(m.sensor ?? "–")} · ${esc(m.bands ?? "–")}`],
    ];
    let timeline;
    if (d.timeline && d.timeline.dates.length) {
      timeline = timelineSvg(d.timeline);
    } else if (!state.run.analysis) {
      timeline = `<p class="hint">No timeline: run <code>${esc(state.run.missing.find((x) => x.stage === "analyze").command)}</code>.</p>`;
    } else {
      timeline = `<p class="hint">This chip has no analysed observations.</p>`;
    }
    const plot = d.plot ? ` <a href="${esc(fileUrl(d.plot))}" target="_blank" rel="noopener">analyze's plot</a>` : "";
    const acq = d.acquisitions.map((a) =>
      `<tr><td>${esc(day(a.date))}</td><td>${esc(a.scene_id)}</td><td class="num">${fixed(a.cloud_fraction, 3)}</td><td>${a.valid ? "yes" : "no"}</td></tr>`).join("");
    return `<h2 id="chip-title">${esc(d.chip_id)} ${badge(d.status)}</h2>
      <div class="buttons">
        <button type="button" data-action="zoom">zoom to chip</button>
        <button type="button" data-action="query">add to query</button>
        <button type="button" data-action="negative">add as negative</button>
        <button type="button" data-action="search">search similar</button>
      </div>
      <h3>Timeline${plot}</h3>${timeline}
      <h3>Before / after</h3><div class="pair" id="before-after">${thumbs}</div>
      <h3>Most similar chips</h3><div id="similar" class="thumbgrid"><p class="hint">…</p></div>
      <h3>Metadata</h3><table class="kv">${kv.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v}</td></tr>`).join("")}</table>
      <details><summary>${d.acquisitions.length} acquisitions</summary>
      <table><thead><tr><th>date</th><th>scene</th><th>cloud</th><th>valid</th></tr></thead><tbody>${acq}</tbody></table></details>`;
  }

  async function loadSimilar(id, token) {
    const box = $("#similar");
    if (!state.run.index) {
      box.outerHTML = `<p class="hint" id="similar">No search index: run <code>${esc(state.run.missing.find((m) => m.stage === "index").command)}</code>.</p>`;
      highlight("similar", []);
      return;
    }
    try {
      const params = new URLSearchParams({ chip: id, k: SIMILAR_K, distinct: 1 });
      const body = await getJSON("/api/search?" + params);
      if (token !== state.chipToken) return;
      box.innerHTML = thumbGrid(body.results, "similar");
      box.dataset.loaded = id;
      highlight("similar", body.results.map((r) => r.chip_id),
        (c, rank) => `similar #${rank + 1}`);
    } catch (error) {
      if (token === state.chipToken) box.innerHTML = `<p class="error">${esc(error.message)}</p>`;
    }
  }

  function thumbGrid(results, role) {
    if (!results.length) return `<p class="hint">no results</p>`;
    const digits = simDigits(results.map((r) => r.similarity));
    return results.map((r, k) =>
      `<div class="thumb" data-role="${role}" data-chip="${esc(r.chip_id)}" title="${esc(r.scene_id)}">` +
      (r.thumbnail_path ? `<img loading="lazy" src="${esc(fileUrl(r.thumbnail_path))}" alt="${esc(r.chip_id)}">` : `<div class="noimg">no image</div>`) +
      `<div class="cid">${k + 1}. ${esc(r.chip_id)}</div>` +
      `<div>similarity <b>${esc(r.similarity.toFixed(digits))}</b></div>` +
      `<div>${esc(day(r.date))}${r.change_status ? " · " + esc(r.change_status) : ""}</div></div>`).join("");
  }

  // ---------------------------------------------------------------- timeline plot
  function timelineSvg(tl) {
    const W = 400; const H = 200;
    const m = { l: 46, r: 10, t: 22, b: 26 };
    const t = tl.dates.map((d) => Date.parse(d));
    const finite = (a) => a.filter((v) => v != null && Number.isFinite(v));
    const ys = finite([...tl.value, ...tl.low, ...tl.high, ...tl.fit]);
    let y0 = Math.min(...ys); let y1 = Math.max(...ys);
    if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
    const py = (y1 - y0) * 0.06; y0 -= py; y1 += py;
    let t0 = Math.min(...t); let t1 = Math.max(...t);
    const change = tl.change_date ? Date.parse(tl.change_date) : NaN;
    const monitor = tl.monitor_start ? Date.parse(tl.monitor_start) : NaN;
    if (!(t1 > t0)) { t0 -= 864e5 * 15; t1 += 864e5 * 15; }
    const pt = (t1 - t0) * 0.03; t0 -= pt; t1 += pt;
    const X = (v) => m.l + (v - t0) / (t1 - t0) * (W - m.l - m.r);
    const Y = (v) => H - m.b - (v - y0) / (y1 - y0) * (H - m.t - m.b);
    const parts = [];
    // band and fit (only where defined)
    const idx = t.map((_, i) => i).filter((i) => tl.low[i] != null && tl.high[i] != null);
    if (idx.length > 1) {
      const up = idx.map((i) => `${X(t[i]).toFixed(1)},${Y(tl.high[i]).toFixed(1)}`);
      const down = idx.slice().reverse().map((i) => `${X(t[i]).toFixed(1)},${Y(tl.low[i]).toFixed(1)}`);
      parts.push(`<polygon class="band" points="${up.concat(down).join(" ")}" fill="#2b6cb0" fill-opacity="0.13" stroke="none"/>`);
    }
    const fitIdx = t.map((_, i) => i).filter((i) => tl.fit[i] != null);
    if (fitIdx.length > 1) {
      parts.push(`<polyline class="fit" points="${fitIdx.map((i) => `${X(t[i]).toFixed(1)},${Y(tl.fit[i]).toFixed(1)}`).join(" ")}" fill="none" stroke="#2b6cb0" stroke-width="1.5"/>`);
    }
    // axes
    const ticks = 4;
    for (let k = 0; k <= ticks; k++) {
      const v = y0 + (y1 - y0) * k / ticks;
      parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${Y(v).toFixed(1)}" y2="${Y(v).toFixed(1)}" stroke="#eee"/>`);
      parts.push(`<text x="${m.l - 4}" y="${(Y(v) + 3).toFixed(1)}" text-anchor="end">${esc(v.toPrecision(3))}</text>`);
    }
    const first = new Date(t0); const last = new Date(t1);
    const monthsSpan = (last.getUTCFullYear() - first.getUTCFullYear()) * 12 + last.getUTCMonth() - first.getUTCMonth();
    const step = Math.max(1, Math.ceil(monthsSpan / 5));
    for (let d = new Date(Date.UTC(first.getUTCFullYear(), first.getUTCMonth() + 1, 1)); d <= last;
      d = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + step, 1))) {
      const x = X(d.getTime()).toFixed(1);
      parts.push(`<line x1="${x}" x2="${x}" y1="${H - m.b}" y2="${H - m.b + 4}" stroke="#888"/>`);
      parts.push(`<text x="${x}" y="${H - m.b + 15}" text-anchor="middle">${d.toISOString().slice(0, 7)}</text>`);
    }
    parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}" stroke="#888"/>`);
    if (Number.isFinite(monitor) && monitor > t0 && monitor < t1) {
      parts.push(`<line x1="${X(monitor).toFixed(1)}" x2="${X(monitor).toFixed(1)}" y1="${m.t}" y2="${H - m.b}" stroke="#999" stroke-dasharray="2 3"/>`);
      const right = X(monitor) > W * 0.75;
      parts.push(`<text x="${(X(monitor) + (right ? -3 : 3)).toFixed(1)}" y="${H - m.b - 4}" text-anchor="${right ? "end" : "start"}">monitoring</text>`);
    }
    if (Number.isFinite(change)) {
      parts.push(`<line class="change" x1="${X(change).toFixed(1)}" x2="${X(change).toFixed(1)}" y1="${m.t}" y2="${H - m.b}" stroke="#d7301f" stroke-width="1.5" stroke-dasharray="5 3"/>`);
      const right = X(change) > W * 0.65;  // label on the side with room
      parts.push(`<text x="${(X(change) + (right ? -3 : 3)).toFixed(1)}" y="${m.t + 20}" text-anchor="${right ? "end" : "start"}" fill="#d7301f">change ${esc(tl.change_date)}</text>`);
    }
    // observations
    t.forEach((ti, i) => {
      const v = tl.value[i];
      if (v == null) return;
      const anomaly = tl.anomaly[i]; const base = tl.baseline[i];
      const fill = anomaly ? "#d7301f" : base ? "#2b6cb0" : "#fff";
      const stroke = anomaly ? "#d7301f" : "#2b6cb0";
      parts.push(`<circle class="obs" cx="${X(ti).toFixed(1)}" cy="${Y(v).toFixed(1)}" r="3" fill="${fill}" stroke="${stroke}" stroke-width="1.2"><title>${esc(day(tl.dates[i]))}: ${esc(v.toPrecision(4))}${anomaly ? " (anomaly)" : ""}</title></circle>`);
    });
    const band = tl.mode === "score" ? `±${tl.threshold}` : `fit ± ${tl.threshold}·rmse`;
    const legend = `<text x="${m.l}" y="12">${esc(tl.mode === "score" ? "anomaly score" : tl.signal)} · ● baseline ○ monitoring <tspan fill="#d7301f">● anomaly</tspan> · band ${esc(band)}</text>`;
    return `<svg class="timeline" id="timeline" viewBox="0 0 ${W} ${H}" role="img" aria-label="timeline of ${esc(tl.signal)}">${legend}${parts.join("")}</svg>`;
  }

  // ---------------------------------------------------------------- search
  function renderQueryLists() {
    const item = (id, list) => `<span data-chip="${esc(id)}">${esc(id)}<button type="button" data-remove="${list}" data-chip="${esc(id)}" title="remove">×</button></span>`;
    $("#query-chips").innerHTML = state.query.map((id) => item(id, "query")).join("");
    $("#negative-chips").innerHTML = state.negatives.map((id) => item(id, "negatives")).join("");
    highlight("query", state.query, () => "query");
    highlight("negative", state.negatives, () => "negative");
  }

  function addTo(list, id) {
    const other = list === "query" ? "negatives" : "query";
    state[other] = state[other].filter((c) => c !== id);
    if (!state[list].includes(id)) state[list].push(id);
    renderQueryLists();
  }

  function searchParams() {
    const form = $("#search-form");
    const params = new URLSearchParams();
    state.query.forEach((id) => params.append("chip", id));
    state.negatives.forEach((id) => params.append("neg", id));
    for (const name of ["k", "min_similarity", "start", "end", "max_cloud", "date"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    params.set("distinct", form.elements.distinct.checked ? "1" : "0");
    params.set("centre", form.elements.centre.checked ? "1" : "0");
    if (form.elements.in_view.checked) {
      const b = map.getBounds();
      const w = Math.max(-180, b.getWest()); const e = Math.min(180, b.getEast());
      const s = Math.max(-90, b.getSouth()); const n = Math.min(90, b.getNorth());
      params.set("bbox", [w, s, e, n].map((v) => v.toFixed(6)).join(","));
    }
    return params;
  }

  async function runSearch() {
    const status = $("#search-status");
    const grid = $("#search-results");
    const download = $("#search-download");
    showTab("search");
    if (!state.run.index) {
      status.innerHTML = `<span class="error">No search index: run <code>${esc(state.run.missing.find((m) => m.stage === "index").command)}</code>.</span>`;
      return;
    }
    if (!state.query.length) {
      status.innerHTML = `<span class="error">Add at least one query chip first (open a chip and press “add to query”, or shift-click chips on the map).</span>`;
      return;
    }
    const params = searchParams();
    const token = ++state.searchToken;
    status.textContent = "searching…";
    grid.dataset.done = "";
    const started = performance.now();
    try {
      const body = await getJSON("/api/search?" + params);
      if (token !== state.searchToken) return;
      const ms = performance.now() - started;
      status.textContent = `${body.results.length} result${body.results.length === 1 ? "" : "s"} in ${ms.toFixed(0)} ms (search ${(body.seconds * 1000).toFixed(0)} ms)`;
      grid.innerHTML = thumbGrid(body.results, "result");
      grid.dataset.done = String(token);
      highlight("similar", []);
      highlight("result", body.results.map((r) => r.chip_id), (c, rank) => `result #${rank + 1}`);
      params.set("format", "geojson");
      download.href = "/api/search?" + params;
      download.classList.remove("disabled");
      download.setAttribute("aria-disabled", "false");
    } catch (error) {
      if (token !== state.searchToken) return;
      status.innerHTML = `<span class="error">${esc(error.message)}</span>`;
      grid.innerHTML = "";
      grid.dataset.done = String(token);
    }
  }

  // ---------------------------------------------------------------- map controls
  function addControls() {
    const Control = L.Control.extend({
      onAdd() {
        const div = L.DomUtil.create("div", "mapctl");
        div.innerHTML = `<label>colour by <select id="colour-by"><option value="status">change status</option><option value="date">change date</option></select></label>
          <label title="needs internet; off by default"><input type="checkbox" id="basemap"> online basemap (OpenStreetMap)</label>`;
        L.DomEvent.disableClickPropagation(div);
        return div;
      },
    });
    new Control({ position: "topright" }).addTo(map);
    const legend = L.control({ position: "bottomright" });
    legend.onAdd = () => { const div = L.DomUtil.create("div", "legend"); div.id = "legend"; return div; };
    legend.addTo(map);
    let osm = null;
    $("#basemap").addEventListener("change", (e) => {
      if (e.target.checked) {
        osm = osm || L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png", {
          maxZoom: 19, attribution: "&copy; OpenStreetMap contributors" });
        osm.addTo(map); osm.bringToBack();
      } else if (osm) {
        map.removeLayer(osm);
      }
    });
    $("#colour-by").addEventListener("change", (e) => {
      state.colourBy = e.target.value;
      recolour();
      chipCanvas.redraw();
      renderLegend();
    });
  }

  function renderLegend() {
    const layer = state.layer;
    const box = $("#legend");
    if (state.colourBy === "date" && layer.changes.length) {
      const [lo, hi] = layer.dateRange;
      const ramp = `linear-gradient(to right, ${RAMP.join(",")})`;
      box.innerHTML = `<b>change date</b><br>${esc(new Date(lo).toISOString().slice(0, 10))} <span class="ramp" style="background:${ramp}"></span> ${esc(new Date(hi).toISOString().slice(0, 10))}<br><i style="background:${OTHER_COLOUR}"></i>no change / no data`;
    } else {
      const counts = [0, 0, 0, 0];
      for (let i = 0; i < layer.n; i++) counts[layer.status[i]]++;
      box.innerHTML = `<b>change status</b>` + STATUS_LABELS.map((label, k) => counts[k] || k < 3
        ? `<br><i style="background:${STATUS_COLOURS[k]}"></i>${esc(label)} (${counts[k].toLocaleString("en")})` : "").join("");
    }
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    document.querySelectorAll(".tabs button").forEach((b) =>
      b.addEventListener("click", () => showTab(b.dataset.tab)));
    document.querySelectorAll("#changes-table th").forEach((th) => th.addEventListener("click", () => {
      const key = th.dataset.key;
      sortState.dir = sortState.key === key ? -sortState.dir : (key === "magnitude" ? -1 : 1);
      sortState.key = key;
      renderChanges();
    }));
    $("#changes-table tbody").addEventListener("click", (e) => {
      const tr = e.target.closest("tr[data-chip]");
      if (tr) selectChip(tr.dataset.chip);
    });
    document.addEventListener("click", (e) => {
      const thumb = e.target.closest(".thumb[data-chip], a[data-chip]");
      if (thumb) { e.preventDefault(); selectChip(thumb.dataset.chip); return; }
      const remove = e.target.closest("button[data-remove]");
      if (remove) {
        state[remove.dataset.remove] = state[remove.dataset.remove].filter((c) => c !== remove.dataset.chip);
        renderQueryLists();
        return;
      }
      const action = e.target.closest("#tab-chip button[data-action]");
      if (action && state.selected) {
        const id = state.selected;
        if (action.dataset.action === "zoom") zoomTo([id]);
        if (action.dataset.action === "query") addTo("query", id);
        if (action.dataset.action === "negative") addTo("negatives", id);
        if (action.dataset.action === "search") { state.query = [id]; renderQueryLists(); runSearch(); }
      }
    });
    $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
    $("#home-link").addEventListener("click", (e) => {
      e.preventDefault();
      history.pushState({}, "", "/");
      route(false);
    });
    window.addEventListener("popstate", () => route(false));
    map.on("click", (e) => {
      const i = chipAt(e.latlng);
      if (i < 0) return;
      const id = state.layer.ids[i];
      if (e.originalEvent.shiftKey) {
        if (state.query.includes(id)) state.query = state.query.filter((c) => c !== id);
        else addTo("query", id);
        renderQueryLists();
        showTab("search");
      } else {
        selectChip(id, { zoom: false });
      }
    });
    let pending = null;
    map.on("mousemove", (e) => {
      pending = e.latlng;
      requestAnimationFrame(() => {
        if (!pending) return;
        const i = chipAt(pending);
        const container = map.getContainer();
        if (i < 0) { container.title = ""; container.style.cursor = ""; } else {
          const id = state.layer.ids[i];
          const roles = Object.values(highlightLabels).map((m) => m.get(id)).filter(Boolean);
          container.title = [id, STATUS_LABELS[state.layer.status[i]], ...roles].join(" · ");
          container.style.cursor = "pointer";
        }
        pending = null;
      });
    });
  }

  function route(zoom) {
    const id = new URLSearchParams(location.search).get("chip");
    if (id) {
      selectChip(id, { push: false, zoom });
    } else {
      state.selected = null;
      highlight("selected", []);
      highlight("similar", []);
      document.title = "geofm serve";
      renderChanges();
      showTab("changes");
    }
  }

  async function start() {
    const t0 = performance.now();
    // no tile fade-in: chips appear at once, in their final colour
    map = L.map("map", { zoomControl: true, maxZoom: 22, worldCopyJump: false,
                         fadeAnimation: false });
    map.attributionControl.setPrefix("Leaflet");
    let run; let meta; let buffer;
    try {
      [run, meta, buffer] = await Promise.all([
        getJSON("/api/run"), getJSON("/api/chips"),
        fetch("/api/chips/footprints.bin").then((r) => {
          if (!r.ok) throw new Error(`footprints: ${r.status} ${r.statusText}`);
          return r.arrayBuffer();
        })]);
    } catch (error) {
      notice(`Could not load the run: ${esc(error.message)}`);
      document.body.dataset.ready = "error";
      return;
    }
    state.run = run;
    state.layer = buildLayer(meta, buffer);
    for (const kind of Object.keys(HIGHLIGHT)) highlightGroups[kind] = L.featureGroup().addTo(map);
    recolour();
    renderHeader();
    addControls();
    renderLegend();
    chipCanvas = makeChipCanvas();
    const b = run.bounds;
    if (b) map.fitBounds([[b[1], b[0]], [b[3], b[2]]], { padding: [20, 20], animate: false });
    else map.setView([0, 0], 2);
    chipCanvas.once("load", () => {
      state.readyAt = performance.now() - t0;
      window.geofmTimings = { ready_ms: state.readyAt, chips: state.layer.n };
      document.body.dataset.ready = "1";
    });
    chipCanvas.addTo(map);
    wire();
    renderQueryLists();
    renderChanges();
    route(true);
  }

  window.geofm = { state, selectChip, runSearch, get map() { return map; } };
  document.addEventListener("DOMContentLoaded", start);
})();
