/* The playground page's interface: the generator form and its automation parameters, the writing box (next-
   character predictions, Tab, Continue, surprise colours) and the model's description. The model is Charnn
   (model.js) in the page, or, on the page `charnn serve` serves (spec.server), the server's API. Text from the
   model or the user only ever enters the page as textContent, never as HTML. */
(function () {
  "use strict";
  const byId = function (id) { return document.getElementById(id); };
  const SLICE_STEPS = 4096, SLICE_MS = 25;  // work per task before yielding to the page (the bound that comes first)
  const DEBUG_STEPS = 256;  // per-step logits kept in window.charnnDebug.logits
  const EVERY = 64;  // the writing box keeps a state every EVERY symbols: an edit re-reads at most that many
  const MAX_SHOWN = 4000;  // characters of the writing box shown coloured (its end)

  function fail(message) {
    const box = byId("page-error");
    box.hidden = false;
    box.textContent = "The page's script failed: " + message;
    const out = byId("output");
    out.dataset.error = "1"; out.dataset.done = "1";
  }
  window.addEventListener("error", function (e) { fail(e.message); });

  // Tasks through a MessageChannel: unlike setTimeout, no 4 ms clamp between slices of work.
  const channel = new MessageChannel(), tasks = [];
  channel.port1.onmessage = function () { const f = tasks.shift(); if (f) f(); };
  function later(f) { tasks.push(f); channel.port2.postMessage(null); }

  function shown(ch) {
    const named = {"\n": "\\n", "\t": "\\t", " ": "space", "\r": "\\r"}[ch];
    if (named) return named;
    const code = ch.codePointAt(0);
    return code < 32 || code === 127 ? "\\x" + code.toString(16).padStart(2, "0") : "\u201c" + ch + "\u201d";
  }

  function say(id, text) { const el = byId(id); el.hidden = !text; el.textContent = text || ""; }

  const spec = JSON.parse(byId("charnn-spec").textContent);
  const served = spec.server || null;  // the page of `charnn serve`: its limits; the server runs the model
  const weights = byId("charnn-weights");
  const model = served ? null : new Charnn.Model(spec, Charnn.base64Bytes(weights.textContent));
  weights.textContent = "";  // the decoded tensors are kept; the base64 text can go
  const vocab = new Charnn.Vocab(spec.vocab);
  window.charnnDebug = {logits: [], openMs: performance.now()};
  document.body.dataset.openMs = window.charnnDebug.openMs.toFixed(0);

  function describeModel() {
    const c = spec.config, list = byId("about-list");
    const extras = [c.layer_norm && "layer norm", c.tie_weights && "tied embedding"].filter(Boolean);
    const loss = spec.val_loss === null ? "no validation loss" : "validation loss " + spec.val_loss.toFixed(4) +
      " nats/char (" + (spec.val_loss / Math.LN2).toFixed(3) + " bits/char)";
    byId("model-name").textContent = spec.name;
    byId("model-summary").textContent = c.model.toUpperCase() + ", " + c.layers + " \u00d7 " + c.hidden +
      " units, embedding " + c.embed + (extras.length ? ", " + extras.join(", ") : "") + "; " +
      spec.parameters.toLocaleString("en") + " parameters; " + loss;
    const rows = [["checkpoint", spec.checkpoint + " (step " + spec.step + ")"],
                  ["vocabulary", vocab.symbols.length + (vocab.bytes ? " byte values (--bytes)" : " characters")],
                  served ? ["runs on", "the server that sent this page (at most " +
                            served.max_length.toLocaleString("en") + " characters a request)"]
                    : ["weights", spec.dtype + ", opened in " + (window.charnnDebug.openMs / 1000).toFixed(2) + " s"],
                  ["trained with", spec.trained_with, true]];
    for (const r of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = r[0];
      if (r[2]) dd.appendChild(document.createElement("code")).textContent = r[1];
      else dd.textContent = r[1];
      list.append(dt, dd);
    }
    byId("vocab").textContent = spec.vocab.names.join(" ");
  }

  // The form's settings, checked; {error} when one is out of range.
  function readOptions() {
    const num = function (id) { const v = byId(id).value.trim(); return v === "" ? null : Number(v); };
    const o = {prime: byId("prime").value, length: num("length"), temperature: num("temperature"),
               topK: num("top-k"), topP: num("top-p"), greedy: byId("greedy").checked, seed: byId("seed").value.trim()};
    if (!Number.isInteger(o.length) || o.length < 0 || o.length > 1e6) return {error: "Length must be 0 to 1000000."};
    if (!(o.temperature >= 0.01 && o.temperature <= 100)) return {error: "Temperature must be 0.01 to 100."};
    if (o.topK !== null && !(Number.isInteger(o.topK) && o.topK >= 1)) return {error: "Top-k must be 1 or more."};
    if (o.topP !== null && !(o.topP > 0 && o.topP <= 1)) return {error: "Top-p must be above 0 and at most 1."};
    if (o.seed && !(/^\d{1,19}$/.test(o.seed) && BigInt(o.seed) < 2n ** 63n)) {
      return {error: "The seed must be a whole number from 0 to 2^63 - 1."};
    }
    if (!o.seed) o.seed = String(crypto.getRandomValues(new Uint32Array(1))[0]);
    return o;
  }

  // A running generation from `state`: `emit(text)` gets each decoded piece, `end()` is called once.
  function Job(state, o, emit, end, record) {
    this.state = state; this.o = o; this.emit = emit; this.end = end; this.record = record;
    this.rng = Charnn.mulberry32(Charnn.seedWord(o.seed)); this.decode = vocab.decoder();
    this.done = 0; this.stopped = false; this.started = performance.now();
  }

  Job.prototype.tick = function (maxSteps) {
    const ids = [], t = performance.now(), o = this.o;
    while (this.done < o.length && !this.stopped && ids.length < maxSteps) {
      const id = Charnn.choose(this.state.logits, o, this.rng());
      ids.push(id);
      if (++this.done < o.length) this.record(model.step(this.state, id));  // no step after the last one
      if ((ids.length & 15) === 0 && performance.now() - t > SLICE_MS) break;
    }
    const last = this.done >= o.length || this.stopped;
    this.emit(this.decode(ids, last));
    if (last) this.end(this);
    return last;
  };

  Job.prototype.run = function (sync) {
    const job = this;
    if (sync) { while (!job.tick(Infinity)); return; }
    (function next() { if (!job.tick(SLICE_STEPS)) later(next); })();
  };

  Job.prototype.stop = function () { this.stopped = true; };

  // --- the server, on the page it serves ------------------------------------------------------------------
  // A POST to the API; a refusal throws its one-line message.
  async function post(path, body, signal) {
    const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: body, signal: signal});
    if (!response.ok) {
      let message = "the server answered " + response.status;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  }

  // The text before which generation and scoring start, as in the page: the start symbol (a newline) when it
  // can be sent as text.
  function startText() {
    const s = vocab.symbols[vocab.startId()];
    return !vocab.bytes || s < 0x80 ? String.fromCodePoint(s) : "";
  }

  // What of `text` the server can read: its characters whose symbols are all in the vocabulary, at most the
  // last `limit` of them; `symbols` is the index in vocab.encode(text).ids of each symbol sent.
  function readable(text, limit) {
    const enc = vocab.encode(text), chars = [], symbols = [];
    let k = 0;
    for (const ch of text) {
      const n = vocab.bytes ? vocab.encoder.encode(ch).length : 1, own = enc.ids.slice(k, k + n);
      if (own.every(function (id) { return id >= 0; })) {
        chars.push(ch);
        for (let j = 0; j < n; j++) symbols.push(k + j);
      }
      k += n;
    }
    let from = Math.max(0, chars.length - limit), drop = 0;
    for (let c = 0; c < from; c++) drop += vocab.bytes ? vocab.encoder.encode(chars[c]).length : 1;
    return {text: chars.slice(from).join(""), symbols: symbols.slice(drop)};
  }

  // A generation streamed from /v1/generate (Server-Sent Events); the same interface as Job.
  function ServerJob(o, prime, emit, end) {
    this.o = o; this.prime = prime; this.emit = emit; this.end = end; this.error = null;
    this.done = 0; this.stopped = false; this.started = performance.now(); this.controller = new AbortController();
  }

  ServerJob.prototype.stop = function () { this.stopped = true; this.controller.abort(); };

  ServerJob.prototype.run = async function () {
    const o = this.o, options = {prime: this.prime || null, length: o.length, temperature: o.temperature,
                                 top_k: o.topK, top_p: o.topP, greedy: o.greedy, stream: true};
    const body = '{"seed":' + BigInt(o.seed) + "," + JSON.stringify(options).slice(1);  // up to 2^63 - 1: not a double
    try {
      const response = await post("v1/generate", body, this.controller.signal);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const part = await reader.read();
        if (part.done) break;
        buffer += part.value;
        for (let cut; (cut = buffer.indexOf("\n\n")) >= 0; buffer = buffer.slice(cut + 2)) {
          this.event(buffer.slice(0, cut));
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") this.error = err.message;
    }
    this.end(this);
  };

  ServerJob.prototype.event = function (block) {
    let name = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (!data) return;
    const value = JSON.parse(data);
    if (name === "message") { this.done += Array.from(value.text).length; this.emit(value.text); }
    else if (name === "done" && !value.complete) this.stopped = true;
    else if (name === "error") this.error = value.error;
  };

  let generation = null;
  function recordDebug(logits) {
    if (window.charnnDebug.logits.length < DEBUG_STEPS) window.charnnDebug.logits.push(Array.from(logits));
  }

  function finishOutput(job) {
    const out = byId("output");
    out.dataset.done = "1";
    generation = null;
    byId("run").disabled = false; byId("stop").disabled = true;
    if (job && job.error) { say("message", job.error); out.dataset.error = "1"; }
    if (job) {
      const s = (performance.now() - job.started) / 1000, cps = s > 0 ? job.done / s : 0;
      out.dataset.cps = cps.toFixed(0);
      say("speed", job.done + " characters in " + s.toFixed(2) + " s (" + cps.toFixed(0) + " per second), seed " +
          job.o.seed + (job.stopped ? "; stopped" : ""));
    }
    if (new URLSearchParams(location.search).get("debug") === "1") {
      byId("debug").textContent = JSON.stringify(window.charnnDebug.logits);
    }
  }

  function startGeneration(sync) {
    if (generation) generation.stop();
    const out = byId("output"), o = readOptions();
    out.dataset.done = "0"; delete out.dataset.error; out.textContent = ""; say("message", ""); say("speed", "");
    window.charnnDebug.logits = [];
    if (o.error) { say("message", o.error); out.dataset.error = "1"; finishOutput(null); return; }
    const enc = o.prime ? vocab.encode(o.prime) : {ids: [vocab.startId()], unknown: []};
    if (enc.unknown.length) {
      say("message", "The prime holds characters this model's vocabulary lacks: " + enc.unknown.map(shown).join(", ") +
          ". Remove them or change the prime.");
      out.dataset.error = "1"; finishOutput(null); return;
    }
    const node = out.appendChild(document.createTextNode(o.prime));  // one text node: #output has no elements
    const append = function (text) { node.appendData(text); };
    byId("run").disabled = true; byId("stop").disabled = false;
    if (served) {
      generation = new ServerJob(o, o.prime, append, finishOutput);
      generation.run();
      return;
    }
    const state = model.initialState();
    for (const id of enc.ids) recordDebug(model.step(state, id));  // the prime warms the state
    generation = new Job(state, o, append, finishOutput, recordDebug);
    generation.run(sync);
  }

  // --- the writing box ---------------------------------------------------------------------------------------
  const editor = byId("editor");
  const ed = {text: null, ids: [], at: [], unknown: [], bits: [], read: 0, saved: [], state: null, busy: false};
  if (!served) {
    ed.state = model.initialState();
    model.step(ed.state, vocab.startId());  // text in the box starts after a newline, as unprimed samples do
    ed.saved = [model.copyState(ed.state)];
  }

  function surpriseBits(logits, id) {
    let max = -Infinity, total = 0;
    for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
    for (let i = 0; i < logits.length; i++) total += Math.exp(logits[i] - max);
    return (max + Math.log(total) - logits[id]) / Math.LN2;
  }

  // Take the box's text: keep what was read of its unchanged start, go back to the last saved state before a change.
  function editorSync() {
    if (editor.value === ed.text) return;
    const enc = vocab.encode(editor.value);
    let p = 0;
    while (p < ed.read && p < enc.ids.length && ed.ids[p] === enc.ids[p]) p++;
    if (p < ed.read) {
      const k = Math.floor(p / EVERY);
      ed.saved.length = k + 1; ed.state = model.copyState(ed.saved[k]); ed.read = k * EVERY; ed.bits.length = ed.read;
    }
    ed.text = editor.value; ed.ids = enc.ids; ed.at = enc.at; ed.unknown = enc.unknown;
  }

  // Read on from ed.read, one step per symbol; false when there is more to read. Unknown symbols are skipped.
  function editorRead(maxSteps) {
    const t = performance.now();
    for (let k = 1; ed.read < ed.ids.length && k <= maxSteps; k++) {
      const id = ed.ids[ed.read];
      ed.bits.push(id < 0 ? NaN : surpriseBits(ed.state.logits, id));
      if (id >= 0) model.step(ed.state, id);
      if (++ed.read % EVERY === 0) ed.saved.push(model.copyState(ed.state));
      if ((k & 15) === 0 && performance.now() - t > SLICE_MS) break;
    }
    return ed.read >= ed.ids.length;
  }

  // The state after the symbols before the cursor (a copy): the end's state, or re-read from a saved one.
  function stateAtCursor() {
    const cursor = editor.selectionStart;
    let n = 0;
    while (n < ed.at.length && ed.at[n] < cursor) n++;
    if (n === ed.read) return model.copyState(ed.state);
    const k = Math.floor(n / EVERY), s = model.copyState(ed.saved[k]);
    for (let i = k * EVERY; i < n; i++) if (ed.ids[i] >= 0) model.step(s, ed.ids[i]);
    return s;
  }

  function symbolText(id) {
    const s = vocab.symbols[id];
    return !vocab.bytes ? String.fromCodePoint(s) : s < 0x80 ? String.fromCharCode(s) : null;  // a lone byte: none
  }

  // `top`: {top: the five likeliest ids, probs: id -> probability}
  function showPredictions(top) {
    const list = byId("predictions");
    list.replaceChildren();
    ed.top = top.top;
    for (const id of top.top) {
      const li = list.appendChild(document.createElement("li")), p = document.createElement("span");
      li.textContent = vocab.names[id];
      p.className = "p"; p.textContent = (100 * top.probs[id]).toFixed(1) + "%";
      li.appendChild(p);
      li.addEventListener("click", function () { insert(symbolText(id)); });
    }
  }

  let renderTimer = null;
  function renderSurprise() {
    const view = byId("surprise-view"), text = ed.text || "", frag = document.createDocumentFragment();
    view.replaceChildren();
    if (!byId("colour").checked) return;
    const bits = new Map();
    ed.at.forEach(function (k, i) { if (ed.bits[i] !== undefined) bits.set(k, (bits.get(k) || 0) + ed.bits[i]); });
    let k = 0;
    for (const ch of text) {
      if (k >= text.length - MAX_SHOWN) {
        const span = frag.appendChild(document.createElement("span")), b = bits.get(k);
        span.textContent = ch;
        if (Number.isNaN(b)) { span.className = "unknown"; span.title = shown(ch) + ": not in the vocabulary"; } else
        if (b !== undefined) {
          span.style.backgroundColor = "rgba(239, 68, 68, " + (0.75 * Math.min(b / 10, 1)).toFixed(3) + ")";
          span.title = shown(ch) + ": " + b.toFixed(2) + " bits";
        }
      }
      k += ch.length;
    }
    view.appendChild(frag);
  }

  function editorWork() {
    ed.busy = false;
    editorSync();
    if (!editorRead(SLICE_STEPS)) {
      say("write-message", "Reading the text\u2026 " + ed.read + " of " + ed.ids.length);
      ed.busy = true; later(editorWork); return;
    }
    say("write-message", ed.unknown.length ? "Not in the vocabulary, skipped: " + ed.unknown.map(shown).join(", ") : "");
    showPredictions(Charnn.topFive(stateAtCursor().logits));
    clearTimeout(renderTimer);
    renderTimer = setTimeout(renderSurprise, 150);
  }

  // On the served page: the predictions at the cursor from /v1/next, the surprise of the text's last
  // max_length characters from /v1/score; an answer that a newer edit overtook is dropped.
  let asked = 0;
  async function serverEditor() {
    const ticket = ++asked, text = editor.value, limit = served.max_length - 1, enc = vocab.encode(text);
    ed.text = text; ed.ids = enc.ids; ed.at = enc.at; ed.unknown = enc.unknown;
    try {
      const before = readable(text.slice(0, editor.selectionStart), limit).text;
      const next = await (await post("v1/next", JSON.stringify({text: startText() + before, k: 5}))).json();
      if (ticket !== asked) return;
      const probs = new Float64Array(vocab.symbols.length), top = [];
      for (const n of next.next) { const id = vocab.index.get(n.symbol); probs[id] = n.prob; top.push(id); }
      showPredictions({top: top, probs: probs});
      const sent = readable(text, limit);
      const body = JSON.stringify({text: startText() + sent.text, per_char: true});
      const score = await (await post("v1/score", body)).json();
      if (ticket !== asked) return;
      ed.bits = enc.ids.map(function (id) { return id < 0 ? NaN : undefined; });
      const got = score.bits.slice(-sent.symbols.length);  // without a start symbol, the first has none
      sent.symbols.slice(sent.symbols.length - got.length).forEach(function (k, i) { ed.bits[k] = got[i]; });
      const skipped = ed.unknown.length ? "Not in the vocabulary, skipped: " + ed.unknown.map(shown).join(", ") : "";
      say("write-message", skipped);
      clearTimeout(renderTimer);
      renderTimer = setTimeout(renderSurprise, 150);
    } catch (err) {
      if (ticket === asked) say("write-message", err.message);
    }
  }
  function editorChanged() {
    if (served) { clearTimeout(ed.timer); ed.timer = setTimeout(serverEditor, 100); return; }  // a request per pause
    if (!ed.busy) { ed.busy = true; later(editorWork); }
  }

  function insert(text) {
    if (!text || editor.readOnly) return;
    editor.setRangeText(text, editor.selectionStart, editor.selectionEnd, "end");
    editorChanged();
  }

  let continuing = null;
  function startContinue() {
    const o = readOptions();
    if (o.error) { say("write-message", o.error); return; }
    editor.readOnly = true; byId("continue").disabled = true; byId("continue-stop").disabled = false;
    let pos = editor.selectionStart;
    const emit = function (text) {
      editor.setRangeText(text, pos, pos, "end"); pos += text.length; editorChanged();
    };
    const end = function (job) {
      continuing = null; editor.readOnly = false; byId("continue").disabled = false;
      byId("continue-stop").disabled = true; say("write-message", job.error || ""); editorChanged();
    };
    if (served) {
      const before = readable(editor.value.slice(0, pos), served.max_length - 1).text;
      continuing = new ServerJob(o, startText() + before, emit, end);
    } else {
      editorSync();
      while (!editorRead(SLICE_STEPS));  // caught up: the state at the cursor is at hand
      continuing = new Job(stateAtCursor(), o, emit, end, function () {});
    }
    continuing.run(false);
  }

  function setUp() {
    describeModel();
    byId("gen-form").addEventListener("submit", function (e) { e.preventDefault(); startGeneration(false); });
    byId("stop").addEventListener("click", function () { if (generation) generation.stop(); });
    for (const ev of ["input", "click", "keyup", "select"]) editor.addEventListener(ev, editorChanged);
    editor.addEventListener("keydown", function (e) {
      if (e.key !== "Tab" || e.shiftKey || !ed.top || !ed.top.length || ed.busy) return;
      const text = symbolText(ed.top[0]);
      if (text) { e.preventDefault(); insert(text); }
    });
    byId("continue").addEventListener("click", startContinue);
    byId("continue-stop").addEventListener("click", function () { if (continuing) continuing.stop(); });
    byId("colour").addEventListener("change", renderSurprise);
    const params = new URLSearchParams(location.search), fields = {prime: "prime", length: "length", seed: "seed",
      temperature: "temperature", top_k: "top-k", top_p: "top-p"};
    for (const key in fields) if (params.has(key)) byId(fields[key]).value = params.get(key);
    if (params.has("greedy")) byId("greedy").checked = ["1", "true", "yes"].indexOf(params.get("greedy")) >= 0;
    editorChanged();
    if (params.get("autorun") === "1") startGeneration(params.get("sync") === "1");
  }
  setUp();
})();
