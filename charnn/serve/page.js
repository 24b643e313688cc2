// The playground: generate (streamed), and type-ahead from /v1/next. Model and user text is only ever set
// with textContent or text nodes, never parsed as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const shown = (c) => ({ "\n": "⏎", " ": "␣", "\t": "⇥" }[c] ?? c);
let controller = null;
let nextTimer = null;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function post(path, body, signal) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function options() {
  const body = { prime: $("prime").value || null, stream: true };
  body.length = parseInt($("length").value, 10) || 500;
  body.temperature = parseFloat($("temperature").value) || 0.8;
  if ($("top_k").value) body.top_k = parseInt($("top_k").value, 10);
  if ($("seed").value) body.seed = parseInt($("seed").value, 10);
  return body;
}

function handle(block, out) {
  let event = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!data) return;
  const value = JSON.parse(data);
  if (event === "message") out.appendChild(document.createTextNode(value.text));
  else if (event === "done") status(`${value.chars} characters` + (value.complete ? "" : " (stopped)"));
  else if (event === "error") status(value.error, true);
}

async function generate() {
  const out = $("output");
  out.textContent = $("prime").value;
  controller = new AbortController();
  $("go").disabled = true; $("stop").disabled = false;
  status("generating…");
  try {
    const response = await post("v1/generate", options(), controller.signal);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handle(buffer.slice(0, cut), out);
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (err) {
    status(err.name === "AbortError" ? "stopped" : err.message, err.name !== "AbortError");
  } finally {
    $("go").disabled = false; $("stop").disabled = true; controller = null;
  }
}

async function suggest() {
  const box = $("next");
  try {
    const answer = await (await post("v1/next", { text: $("prime").value, k: 8 })).json();
    box.replaceChildren(...answer.next.map(({ char, prob }) => {
      const button = document.createElement("button");
      button.textContent = `${shown(char)} ${(100 * prob).toFixed(0)}%`;
      button.title = "append this character";
      button.addEventListener("click", () => { $("prime").value += char; suggest(); $("prime").focus(); });
      return button;
    }));
    if (!controller) status("");
  } catch (err) {
    box.replaceChildren();
    status(err.message, true);
  }
}

async function describe() {
  try {
    const info = await (await fetch("v1/model")).json();
    const m = info.model;
    const val = info.val_loss == null ? "not evaluated" : `validation ${info.val_loss.toFixed(3)} nats/char`;
    $("model").textContent = `${info.checkpoint}: ${m.layers}x${m.hidden} ${m.model}, ` +
      `${info.parameters.toLocaleString()} parameters, ${info.vocab_size} symbols, step ${info.step}, ${val}`;
    document.title = `charnn · ${info.checkpoint}`;
  } catch (err) {
    status(`cannot reach the server: ${err.message}`, true);
  }
}

$("go").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("prime").addEventListener("input", () => { clearTimeout(nextTimer); nextTimer = setTimeout(suggest, 150); });
describe();
suggest();
