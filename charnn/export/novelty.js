// The playground's novelty view (charnn export --with-novelty): after each generation, the longest span of the
// sample copied verbatim from the training text and the characters inside copied spans of at least copy_span,
// found as charnn.novelty finds them (a binary search of the corpus's suffix array for each position of the
// sample, then the common prefix with the two suffixes next to where it would sort). Text goes in as text only.
(function () {
  "use strict";
  const specNode = document.getElementById("charnn-novelty-spec");
  const dataNode = document.getElementById("charnn-novelty");
  const out = document.getElementById("output");
  if (!specNode || !dataNode || !out) return;
  const spec = JSON.parse(specNode.textContent);
  const bytes = Charnn.base64Bytes(dataNode.textContent);
  dataNode.textContent = "";
  const n = spec.count;
  const sa = new Int32Array(bytes.buffer, 0, n);  // little-endian, as written
  const idsAt = 4 * n;
  const ids = spec.id_bytes === 1 ? new Uint8Array(bytes.buffer, idsAt, n)
    : spec.id_bytes === 2 ? new Uint16Array(bytes.buffer.slice(idsAt, idsAt + 2 * n)) : new Uint32Array(bytes.buffer.slice(idsAt));
  const symbols = spec.symbols;

  // Common prefix of pattern[i:] and the corpus suffix at `start`, and the sign of the first difference.
  function compare(pattern, i, start) {
    let k = 0;
    while (i + k < pattern.length && start + k < n) {
      const a = pattern[i + k], b = symbols[ids[start + k]];
      if (a !== b) return [k, a < b ? -1 : 1];
      k++;
    }
    return [k, i + k >= pattern.length ? -1 : 1];  // a pattern that ran out sorts first
  }

  function matching(pattern) {
    const lengths = new Array(pattern.length).fill(0), offsets = new Array(pattern.length).fill(-1);
    for (let i = 0; i < pattern.length; i++) {
      let lo = 0, hi = n;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (compare(pattern, i, sa[mid])[1] > 0) lo = mid + 1; else hi = mid;
      }
      for (const at of [lo - 1, lo]) {
        if (at < 0 || at >= n) continue;
        const common = compare(pattern, i, sa[at])[0];
        if (common > lengths[i]) { lengths[i] = common; offsets[i] = sa[at]; }
      }
    }
    return {lengths: lengths, offsets: offsets};
  }

  function show(chars) {
    const pattern = chars.map(function (c) { return c.codePointAt(0); });
    const m = matching(pattern), inside = new Array(chars.length).fill(false);
    let longest = 0, where = -1;
    for (let i = 0; i < chars.length; i++) {
      if (m.lengths[i] > longest) { longest = m.lengths[i]; where = m.offsets[i]; }
      if (m.lengths[i] >= spec.copy_span) for (let k = i; k < i + m.lengths[i]; k++) inside[k] = true;
    }
    const copied = inside.filter(Boolean).length, share = chars.length ? copied / chars.length : 0;
    const pct = share > 0 && share < 0.01 ? "<1%" : Math.round(100 * share) + "%";
    line.textContent = "novelty: longest copied span " + longest.toLocaleString("en") + " characters" +
      (longest ? " (corpus offset " + where.toLocaleString("en") + ")" : "") + "; " + pct +
      " of characters in copied spans of " + spec.copy_span + " or more (marked below)";
    view.textContent = "";
    let at = 0;
    while (at < chars.length) {
      let end = at;
      while (end < chars.length && inside[end] === inside[at]) end++;
      const piece = chars.slice(at, end).join("");
      if (inside[at]) {
        const mark = view.appendChild(document.createElement("mark"));
        mark.textContent = piece;
      } else view.appendChild(document.createTextNode(piece));
      at = end;
    }
    line.hidden = view.hidden = false;
  }

  const line = document.createElement("p"), view = document.createElement("pre");
  line.id = "novelty"; line.className = "note"; line.hidden = true;
  view.id = "novelty-view"; view.className = "output"; view.hidden = true;
  out.after(line, view);
  function update() {
    if (out.dataset.done !== "1" || out.dataset.error) { line.hidden = view.hidden = true; return; }
    const prime = Array.from(document.getElementById("prime").value);
    show(Array.from(out.textContent).slice(prime.length));
  }
  new MutationObserver(update).observe(out, {attributes: true, attributeFilter: ["data-done"]});
  update();  // a generation that ran before this script (autorun) has ended already
})();
