/* charnn's model in the browser: reads the weights embedded in the page and runs one step of embedding ->
   stacked LSTM / GRU / RNN (tanh) cells -> [layer norm] -> linear head, in PyTorch's weight layout as the page's
   layout table names it; plus the vocabulary, the sampler and the seeded generator. No DOM access: the page's
   interface is playground.js. Arithmetic is in float64 on float32 (or float16) weights. */
var Charnn = (function () {
  "use strict";

  function base64Bytes(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text.trim());
    const bin = atob(text.trim()), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function halfToFloat(bits) {
    const sign = bits & 0x8000 ? -1 : 1, exp = (bits >> 10) & 0x1f, frac = bits & 0x3ff;
    if (exp === 0) return sign * frac * Math.pow(2, -24);
    if (exp === 31) return frac ? NaN : sign * Infinity;
    return sign * (1 + frac / 1024) * Math.pow(2, exp - 15);
  }

  // Each tensor of spec.tensors as a Float32Array, from one little-endian buffer of float32 or float16.
  function readTensors(spec, bytes) {
    const half = spec.dtype === "float16", size = half ? 2 : 4, out = {};
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const littleHost = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
    for (const t of spec.tensors) {
      const n = t.shape.reduce(function (a, b) { return a * b; }, 1), start = t.offset * size;
      if (start + n * size > bytes.byteLength) throw new Error("the page's weights are truncated");
      if (!half && littleHost && (bytes.byteOffset + start) % 4 === 0) {
        out[t.name] = new Float32Array(bytes.buffer, bytes.byteOffset + start, n);
        continue;
      }
      const a = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        a[i] = half ? halfToFloat(view.getUint16(start + 2 * i, true)) : view.getFloat32(start + 4 * i, true);
      }
      out[t.name] = a;
    }
    return out;
  }

  const CACHE_ENTRIES = 1 << 23;  // 64 MB of float64

  function sigmoid(x) { return 1 / (1 + Math.exp(-x)); }

  function maxOf(a) {
    let m = -Infinity;
    for (let i = 0; i < a.length; i++) if (a[i] > m) m = a[i];
    return m;
  }

  // out = W x + b for W of shape (out.length, cols), row-major. Four rows at a time, each x[k] read once for
  // the four: twice the speed of one row at a time in V8, and each row's sum is still taken in order of k.
  function matvec(w, b, x, out, cols) {
    const rows = out.length;
    let r = 0;
    for (; r + 3 < rows; r += 4) {
      const b0 = r * cols, b1 = b0 + cols, b2 = b1 + cols, b3 = b2 + cols;
      let s0 = b[r], s1 = b[r + 1], s2 = b[r + 2], s3 = b[r + 3];
      for (let k = 0; k < cols; k++) {
        const xk = x[k];
        s0 += w[b0 + k] * xk; s1 += w[b1 + k] * xk; s2 += w[b2 + k] * xk; s3 += w[b3 + k] * xk;
      }
      out[r] = s0; out[r + 1] = s1; out[r + 2] = s2; out[r + 3] = s3;
    }
    for (; r < rows; r++) {
      let s = b[r];
      for (let k = 0, base = r * cols; k < cols; k++) s += w[base + k] * x[k];
      out[r] = s;
    }
  }

  function Model(spec, bytes) {
    const cfg = spec.config, w = readTensors(spec, bytes), layout = spec.layout[cfg.model];
    this.kind = cfg.model; this.H = cfg.hidden; this.E = cfg.embed; this.L = cfg.layers;
    this.V = spec.vocab.symbols.length; this.stateNames = layout.state;
    this.at = {}; this.act = {};  // each block's first row in the stacked matrices, and its nonlinearity
    layout.blocks.forEach(function (name, k) {
      this.at[name] = k * cfg.hidden;
      this.act[name] = layout.gates.indexOf(name) >= 0 ? sigmoid : Math.tanh;
    }, this);
    this.embed = w["embed.weight"];
    this.layers = [];
    for (let l = 0; l < this.L; l++) {
      this.layers.push({wih: w["rnn.weight_ih_l" + l], whh: w["rnn.weight_hh_l" + l], bih: w["rnn.bias_ih_l" + l],
                        bhh: w["rnn.bias_hh_l" + l], inputs: l ? this.H : this.E});
    }
    this.ln = cfg.layer_norm ? {weight: w["ln.weight"], bias: w["ln.bias"], eps: spec.layer_norm_eps} : null;
    this.headW = cfg.tie_weights ? this.embed : w["head.weight"];  // tied: one matrix in both places
    this.headB = w["head.bias"];
    const G = layout.blocks.length * this.H;
    this.gi = new Float64Array(G); this.gh = new Float64Array(G); this.top = new Float64Array(this.H);
    this.inputCache = new Map();
  }

  // The state before any input: zeros, as nn.LSTM/GRU/RNN start; `logits` receives each step's output.
  Model.prototype.initialState = function () {
    const s = {logits: new Float64Array(this.V)};
    for (const name of this.stateNames) {
      s[name] = [];
      for (let l = 0; l < this.L; l++) s[name].push(new Float64Array(this.H));
    }
    return s;
  };

  Model.prototype.copyState = function (from) {
    const s = {logits: Float64Array.from(from.logits)};
    for (const name of this.stateNames) s[name] = from[name].map(function (a) { return Float64Array.from(a); });
    return s;
  };

  // One step: symbol id -> state.logits (V), updating the state in place.
  Model.prototype.step = function (state, id) {
    let x = this.embed.subarray(id * this.E, (id + 1) * this.E);
    for (let l = 0; l < this.L; l++) {
      const p = this.layers[l];
      if (l === 0) this.gi.set(this.inputRow(id, x));
      else matvec(p.wih, p.bih, x, this.gi, p.inputs);
      matvec(p.whh, p.bhh, state.h[l], this.gh, this.H);
      this.cell(state, l);
      x = state.h[l];
    }
    matvec(this.headW, this.headB, this.ln ? this.norm(x) : x, state.logits, this.H);
    return state.logits;
  };

  // Layer 0's input part W_ih e + b_ih depends only on the symbol: computed once per symbol and kept (for
  // vocabularies up to CACHE_ENTRIES numbers' worth; beyond, computed at each step).
  Model.prototype.inputRow = function (id, e) {
    let row = this.inputCache.get(id);
    if (row) return row;
    const p = this.layers[0];
    row = new Float64Array(this.gi.length);
    matvec(p.wih, p.bih, e, row, p.inputs);
    if (this.V * row.length <= CACHE_ENTRIES) this.inputCache.set(id, row);
    return row;
  };

  // nn.LSTM: c' = f c + i g, h' = o tanh(c'). nn.GRU: n = tanh(W_in x + b_in + r (W_hn h + b_hn)),
  // h' = (1 - z) n + z h. nn.RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh). Blocks by the layout table's names.
  Model.prototype.cell = function (state, l) {
    const gi = this.gi, gh = this.gh, at = this.at, act = this.act, h = state.h[l];
    if (this.kind === "lstm") {
      const c = state.c[l], I = at.input, F = at.forget, G = at.candidate, O = at.output;
      for (let j = 0; j < this.H; j++) {
        const i = act.input(gi[I + j] + gh[I + j]), f = act.forget(gi[F + j] + gh[F + j]);
        const g = act.candidate(gi[G + j] + gh[G + j]), o = act.output(gi[O + j] + gh[O + j]);
        c[j] = f * c[j] + i * g;
        h[j] = o * Math.tanh(c[j]);
      }
    } else if (this.kind === "gru") {
      const R = at.reset, Z = at.update, N = at.candidate;
      for (let j = 0; j < this.H; j++) {
        const r = act.reset(gi[R + j] + gh[R + j]), z = act.update(gi[Z + j] + gh[Z + j]);
        const n = act.candidate(gi[N + j] + r * gh[N + j]);  // gh holds b_hn: r scales it too
        h[j] = (1 - z) * n + z * h[j];
      }
    } else {
      const N = at.candidate;
      for (let j = 0; j < this.H; j++) h[j] = act.candidate(gi[N + j] + gh[N + j]);
    }
  };

  // nn.LayerNorm over the hidden units: biased variance, eps inside the square root.
  Model.prototype.norm = function (x) {
    const H = this.H, y = this.top, ln = this.ln;
    let mean = 0, v = 0;
    for (let j = 0; j < H; j++) mean += x[j];
    mean /= H;
    for (let j = 0; j < H; j++) v += (x[j] - mean) * (x[j] - mean);
    const scale = 1 / Math.sqrt(v / H + ln.eps);
    for (let j = 0; j < H; j++) y[j] = (x[j] - mean) * scale * ln.weight[j] + ln.bias[j];
    return y;
  };

  // Text -> symbols: code points, or UTF-8 bytes for a --bytes model. `ids[k]` is the symbol's id (-1 when the
  // vocabulary lacks it) and `at[k]` the index (UTF-16) of the character it came from.
  function Vocab(v) {
    this.symbols = v.symbols; this.bytes = v.bytes; this.names = v.names; this.index = new Map();
    v.symbols.forEach(function (s, i) { this.index.set(s, i); }, this);
    this.encoder = new TextEncoder();
  }

  Vocab.prototype.encode = function (text) {
    const ids = [], at = [], unknown = [];
    let k = 0;
    for (const ch of text) {
      const syms = this.bytes ? this.encoder.encode(ch) : [ch.codePointAt(0)];
      for (const s of syms) {
        const id = this.index.has(s) ? this.index.get(s) : -1;
        if (id < 0 && unknown.indexOf(ch) < 0) unknown.push(ch);
        ids.push(id); at.push(k);
      }
      k += ch.length;
    }
    return {ids: ids, at: at, unknown: unknown};
  };

  // Ids -> text, a piece at a time (a --bytes model's UTF-8 may split a character across pieces).
  Vocab.prototype.decoder = function () {
    const symbols = this.symbols;
    if (!this.bytes) {
      return function (ids) { return ids.map(function (i) { return String.fromCodePoint(symbols[i]); }).join(""); };
    }
    const td = new TextDecoder("utf-8");
    return function (ids, last) { return td.decode(new Uint8Array(ids.map(function (i) { return symbols[i]; })),
                                                   {stream: !last}); };
  };

  // Where unprimed text starts, as charnn sample does: newline, else space, else the first symbol (not shown).
  Vocab.prototype.startId = function () {
    for (const s of [10, 32]) if (this.index.has(s)) return this.index.get(s);
    return 0;
  };

  // The page's seeded generator: mulberry32 (Tommy Ettinger), 32 bits of state, seeded with the seed's low 32
  // bits XOR its high 32 bits; each uniform is the next 32-bit output / 2^32. Same seed, same text.
  function seedWord(text) {
    const n = BigInt(text);
    return Number((n ^ (n >> 32n)) & 0xffffffffn);
  }

  function mulberry32(seed) {
    let a = seed >>> 0;
    return function () {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  // The next id from logits, as charnn samples: argmax when greedy; else softmax of logits / temperature after
  // top-k and top-p filtering, and the first id whose cumulative probability exceeds uniform * total.
  // Function by function it mirrors charnn/sampling/draw.py: `choose` (argmax when greedy), `scale` (the division
  // by the temperature), `filtered_cdf` (top-k, softmax, top-p; here in float64, the running sum in the last
  // loop) and `inverse_cdf` (the first id whose cdf exceeds uniform * total, else the last). mulberry32 takes
  // the place of `seeded_generator` and `uniforms`, so a seed gives the page its own text, not `charnn sample`'s.
  function choose(logits, o, uniform) {
    const V = logits.length;
    if (o.greedy) {
      let best = 0;
      for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
      return best;
    }
    const p = Float64Array.from(logits, function (x) { return x / o.temperature; });
    if (o.topK && o.topK < V) {
      const kth = Array.from(p).sort(function (a, b) { return b - a; })[o.topK - 1];
      for (let i = 0; i < V; i++) if (p[i] < kth) p[i] = -Infinity;
    }
    const max = maxOf(p);
    let total = 0;
    for (let i = 0; i < V; i++) { p[i] = Math.exp(p[i] - max); total += p[i]; }
    if (!isFinite(total)) throw new Error("non-finite probabilities while sampling");
    if (o.topP && o.topP < 1) {  // keep the smallest set of likeliest ids whose probability reaches top_p
      const order = Array.from(p.keys()).sort(function (a, b) { return p[b] - p[a]; });
      let before = 0;
      for (const i of order) { const keep = before < o.topP * total; before += p[i]; if (!keep) p[i] = 0; }
    }
    let cdf = 0, sum = 0;
    for (let i = 0; i < V; i++) sum += p[i];
    const target = uniform * sum;
    for (let i = 0; i < V; i++) { cdf += p[i]; if (cdf > target) return i; }
    return V - 1;
  }

  // Probabilities (temperature 1) and the five likeliest ids, for the writing box.
  function topFive(logits) {
    const max = maxOf(logits);
    let total = 0;
    const p = Float64Array.from(logits, function (x) { const e = Math.exp(x - max); total += e; return e; });
    for (let i = 0; i < p.length; i++) p[i] /= total;
    const order = Array.from(p.keys()).sort(function (a, b) { return p[b] - p[a]; }).slice(0, 5);
    return {probs: p, top: order};
  }

  return {base64Bytes: base64Bytes, Model: Model, Vocab: Vocab, choose: choose, topFive: topFive,
          mulberry32: mulberry32, seedWord: seedWord};
})();
