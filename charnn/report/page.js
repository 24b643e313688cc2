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
