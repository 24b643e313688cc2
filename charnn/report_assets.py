"""The style and script inlined into every `charnn report` page (no CDN, nothing fetched).

The script reads the page's JSON data block, adds hover read-outs to the SVG charts, and builds the
surprise heatmap and the neuron explorer; a failure shows in the page's error box, not silently.
"""

PAGE_CSS = """
:root { --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#fff; --card:#f9fafb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  background: var(--bg); margin: 0 auto; max-width: 1220px; padding: 0 20px 60px; }
header h1 { font-size: 22px; margin: 18px 0 2px; } header p { margin: 0; color: var(--muted); }
nav { position: sticky; top: 0; background: var(--bg); padding: 8px 0; border-bottom: 1px solid var(--line);
  z-index: 2; } nav a { margin-right: 14px; color: #2563eb; text-decoration: none; }
h2 { font-size: 18px; margin: 26px 0 8px; } h3 { font-size: 15px; margin: 14px 0 6px; }
.note { color: var(--muted); margin: 4px 0 10px; }
.error { background: #fee2e2; color: #991b1b; padding: 8px 12px; border-radius: 6px; margin: 8px 0; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top; }
table.kv th { font-weight: 500; color: var(--muted); white-space: nowrap; }
.config { display: flex; flex-wrap: wrap; gap: 8px 36px; }
.charts { display: flex; flex-wrap: wrap; gap: 10px; } figure { margin: 0; }
svg { font: 11px system-ui, sans-serif; overflow: visible; }
svg .plot { fill: var(--card); stroke: var(--line); } svg .grid { stroke: var(--line); }
svg .tickline { stroke: #9ca3af; } svg .tick { fill: var(--muted); } svg .axis { fill: var(--fg); }
svg .series { fill: none; stroke-width: 1.6; } svg .hline { stroke: #9ca3af; stroke-dasharray: 2 3; }
svg .legend { fill: var(--fg); } svg .empty { fill: var(--muted); font-size: 14px; }
svg .hl { fill: none; stroke-width: 2; pointer-events: none; }
.tooltip { position: absolute; pointer-events: none; background: #111827; color: #fff; padding: 4px 8px;
  border-radius: 4px; font-size: 12px; z-index: 5; max-width: 420px; }
ol.timeline { list-style: none; padding: 0; margin: 0; border-left: 3px solid var(--line); }
ol.timeline li { margin: 0 0 12px; padding-left: 14px; position: relative; }
ol.timeline li::before { content: ""; position: absolute; left: -8px; top: 5px; width: 13px; height: 13px;
  border-radius: 50%; background: #2563eb; }
ol.timeline .meta { color: var(--muted); } ol.timeline pre { margin: 4px 0 0; background: var(--card);
  padding: 8px; border-radius: 6px; white-space: pre-wrap; font-size: 12.5px; }
.passage-wrap { display: flex; gap: 12px; align-items: flex-start; }
.passage { font: 13px/1.5 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;
  word-break: break-all; max-height: 420px; overflow-y: auto; border: 1px solid var(--line); padding: 8px;
  flex: 1; border-radius: 6px; }
.passage span { cursor: default; } .passage span.cur { outline: 1px solid #111827; }
.panel { width: 250px; flex: none; border: 1px solid var(--line); border-radius: 6px; padding: 8px;
  background: var(--card); font-size: 13px; position: sticky; top: 44px; }
.panel .row { display: flex; align-items: center; gap: 6px; margin: 2px 0; }
.panel .sym { font-family: ui-monospace, monospace; width: 34px; }
.panel .bar { height: 9px; background: #93c5fd; } .panel .row.hit .bar { background: #16a34a; }
.panel .p { color: var(--muted); width: 48px; text-align: right; }
.scale { display: flex; align-items: center; gap: 6px; color: var(--muted); margin: 6px 0; }
.scale i { display: inline-block; width: 160px; height: 10px; border: 1px solid var(--line);
  background: linear-gradient(90deg, #fff, rgb(239,68,68)); }
.controls { display: flex; gap: 16px; align-items: center; margin: 6px 0; }
#unit-value { color: var(--muted); }
table.corr tr[data-unit] { cursor: pointer; } table.corr tr[data-unit]:hover { background: #eff6ff; }
table.corr tr.sel { background: #dbeafe; }
.gate-layer { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.gate-layer h3 { width: 100%; margin-bottom: 0; }
.stack { display: flex; width: 220px; height: 12px; border: 1px solid var(--line); }
.stack .left { background: #60a5fa; } .stack .mid { background: #d1d5db; }
.stack .right { background: #f87171; }
.legend .key::before { content: ""; display: inline-block; width: 9px; height: 9px; border-radius: 50%;
  background: var(--c); margin: 0 4px 0 10px; }
"""

PAGE_JS = r"""
(function () {
  "use strict";
  const errorBox = document.getElementById("report-error");
  function fail(message) {
    errorBox.hidden = false;
    errorBox.textContent = "The report's script failed: " + message;
  }
  window.addEventListener("error", function (e) { fail(e.message); });

  function shown(ch) { return ch === "\n" ? "\u21b5" : ch === " " ? "\u2423" : ch === "\t" ? "\u21e5" : ch; }

  function setupCharts(charts) {
    const tip = document.getElementById("tooltip");
    for (const id of Object.keys(charts)) {
      const svg = document.getElementById(id), pts = charts[id];
      if (!svg || !pts.length) continue;
      const hl = svg.querySelector(".hl");
      svg.addEventListener("mousemove", function (e) {
        const m = svg.getScreenCTM();
        if (!m) return;
        const p = new DOMPoint(e.clientX, e.clientY).matrixTransform(m.inverse());
        let best = null, bestD = Infinity;
        for (const pt of pts) {
          const dx = pt[0] - p.x, dy = (pt[1] - p.y) * 0.3, d = dx * dx + dy * dy;
          if (d < bestD) { bestD = d; best = pt; }
        }
        hl.setAttribute("cx", best[0]); hl.setAttribute("cy", best[1]); hl.setAttribute("stroke", best[3]);
        tip.hidden = false; tip.textContent = best[2];
        tip.style.left = (e.pageX + 14) + "px"; tip.style.top = (e.pageY + 14) + "px";
      });
      svg.addEventListener("mouseleave", function () { tip.hidden = true; hl.setAttribute("cx", -10); });
    }
  }

  function buildPassage(el, data, n) {
    const frag = document.createDocumentFragment(), spans = [];
    for (let t = 0; t < n; t++) {
      const s = document.createElement("span"), ch = data.vocab[data.ids[t]];
      s.textContent = ch === "\n" ? "\u21b5\n" : ch;
      s.dataset.t = t;
      frag.appendChild(s); spans.push(s);
    }
    el.appendChild(frag);
    return spans;
  }

  function pointed(el, fn) {
    let current = null;
    el.addEventListener("mouseover", function (e) {
      const s = e.target.closest("span[data-t]");
      if (!s || s === current) return;
      if (current) current.classList.remove("cur");
      current = s; s.classList.add("cur");
      fn(Number(s.dataset.t));
    });
  }

  function setupSurprise(data) {
    const el = document.getElementById("surprise-text"), panel = document.getElementById("surprise-panel");
    const spans = buildPassage(el, data, data.ids.length), k = data.k;
    for (let t = 1; t < spans.length; t++) {
      const a = Math.min(data.loss[t - 1] / 6, 1);
      spans[t].style.background = "rgba(239,68,68," + a.toFixed(3) + ")";
    }
    pointed(el, function (t) {
      panel.textContent = "";
      const head = document.createElement("div");
      const ch = data.vocab[data.ids[t]];
      if (t === 0) {
        head.textContent = "'" + shown(ch) + "' is the first character: nothing predicts it.";
        panel.appendChild(head);
        return;
      }
      const loss = data.loss[t - 1];
      head.innerHTML = "<b></b><br>";
      head.firstChild.textContent = "'" + shown(ch) + "' at " + t;
      head.appendChild(document.createTextNode(loss.toFixed(3) + " nats (" + (loss / Math.LN2).toFixed(3) +
        " bits), p = " + Math.exp(-loss).toFixed(3)));
      panel.appendChild(head);
      const sub = document.createElement("div");
      sub.className = "note"; sub.textContent = "the model expected:";
      panel.appendChild(sub);
      for (let j = 0; j < k; j++) {
        const id = data.top_ids[(t - 1) * k + j], p = data.top_probs[(t - 1) * k + j];
        const row = document.createElement("div"); row.className = "row" + (id === data.ids[t] ? " hit" : "");
        const sym = document.createElement("span"), bar = document.createElement("span");
        const pv = document.createElement("span");
        sym.className = "sym"; sym.textContent = shown(data.vocab[id]);
        bar.className = "bar"; bar.style.width = (p * 150).toFixed(1) + "px";
        pv.className = "p"; pv.textContent = p.toFixed(3);
        row.append(sym, pv, bar); panel.appendChild(row);
      }
    });
  }

  function setupNeurons(data) {
    const el = document.getElementById("neuron-text"), select = document.getElementById("unit-select");
    const out = document.getElementById("unit-value"), n = data.shown;
    const spans = buildPassage(el, data, n), decoded = {};
    data.units.forEach(function (g, gi) {
      const group = document.createElement("optgroup");
      group.label = "layer " + (g.layer + 1) + " " + g.kind + (g.kind === "cell" ? " (tanh c)" : " (h)");
      for (let u = 0; u < g.size; u++) {
        const o = document.createElement("option");
        o.value = g.layer + ":" + g.kind + ":" + u;
        o.textContent = "layer " + (g.layer + 1) + " " + g.kind + " " + u;
        group.appendChild(o);
      }
      select.appendChild(group);
    });
    function values(key) {
      const [layer, kind, unit] = key.split(":"), gi = data.units.findIndex(
        function (g) { return String(g.layer) === layer && g.kind === kind; });
      if (!(gi in decoded)) {
        const raw = atob(data.units[gi].data), bytes = new Uint8Array(raw.length);
        for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
        decoded[gi] = new Int8Array(bytes.buffer);
      }
      return decoded[gi].subarray(Number(unit) * n, (Number(unit) + 1) * n);
    }
    let current = null;
    function show(key) {
      select.value = key; current = values(key);
      for (let t = 0; t < n; t++) {
        const v = current[t] / 127;
        spans[t].style.background = v >= 0 ? "rgba(239,68,68," + v.toFixed(3) + ")"
                                           : "rgba(37,99,235," + (-v).toFixed(3) + ")";
      }
      for (const row of document.querySelectorAll("#correlations tr[data-unit]")) {
        row.classList.toggle("sel", row.dataset.unit === key);
      }
      out.textContent = "";
    }
    select.addEventListener("change", function () { show(select.value); });
    pointed(el, function (t) {
      out.textContent = "'" + shown(data.vocab[data.ids[t]]) + "' at " + t + ": activation " +
        (current[t] / 127).toFixed(2);
    });
    for (const row of document.querySelectorAll("#correlations tr[data-unit]")) {
      row.addEventListener("click", function () { show(row.dataset.unit); });
    }
    const first = document.querySelector("#correlations tr[data-unit]");
    show(first ? first.dataset.unit : select.options[0].value);
  }

  try {
    const data = JSON.parse(document.getElementById("report-data").textContent);
    setupCharts(data.charts || {});
    if (data.ids) { setupSurprise(data); setupNeurons(data); }
    document.body.dataset.ready = "1";
  } catch (e) {
    fail(e && e.message ? e.message : String(e));
  }
})();
"""
