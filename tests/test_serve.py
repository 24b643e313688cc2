"""`charnn serve`: the batching engine (no HTTP needed), the API in-process (FastAPI's TestClient), and a real
uvicorn server in a subprocess (streams, disconnects, signals). The HTTP tests skip without FastAPI."""

from __future__ import annotations

import html
import json
import math
import re
import signal
import socket
import subprocess
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from charnn.config import DataConfig, ModelConfig, SampleConfig
from charnn.data import Vocab
from charnn.model import CharRNN
from charnn.sampling.generate import prime_ids, sample_text
from charnn.sampling.stepper import Tuning
from charnn.serve.engine import Engine
from charnn.serve.jobs import Job, ServerBusy
from tests.conftest import PYTHON, REPO, TINY_TEXT, cli_env

HTTP = all(find_spec(name) is not None for name in ("fastapi", "fastapi_offline", "uvicorn", "httpx"))
needs_http = pytest.mark.skipif(not HTTP, reason="needs the serve extra and httpx: pip install 'charnn[test]'")
VOCAB = Vocab(tuple(sorted({ord(c) for c in TINY_TEXT})))
# kernels change with the batch size here: tanh as a sigmoid from 4 rows, weights packed from 4 rows
SWITCHING = Tuning(sigmoid_tanh_work=4 * 24, pack_min_weight=0, pack_min_rows=4)


def model_of(kind: str = "lstm", seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(model=kind, layers=2, hidden=24, embed=8), len(VOCAB)).eval()


class Collector:
    """An engine sink: each job's texts and end, and an event set when it ended."""

    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.ends: dict[int, str] = {}
        self.first = threading.Event()

    def __call__(self, outputs) -> None:
        for out in outputs:
            texts = self.texts.setdefault(id(out.job), [""] * len(out.texts))
            for i, text in enumerate(out.texts):
                texts[i] += text
            self.first.set()
            if out.end:
                self.ends[id(out.job)] = out.end
                out.job.handle.set()


def job_of(cfg: SampleConfig, **kw) -> Job:
    return Job(cfg, prime_ids(VOCAB, cfg.prime)[0], handle=threading.Event(), **kw)


def run_jobs(engine: Engine, jobs: list[Job], *, stagger: bool = False) -> None:
    """Submit the jobs (after the first has produced text, when `stagger`) and wait for all of them."""
    engine.start()
    try:
        for k, job in enumerate(jobs):
            engine.submit(job)
            if stagger and k == 0:
                assert engine.sink.first.wait(10)
        for job in jobs:
            assert job.handle.wait(20), "a job did not finish"
    finally:
        engine.close()
        engine.join(5)


CONFIGS = [
    SampleConfig(length=300, seed=3, temperature=1.0, prime="First", num_samples=3),
    SampleConfig(length=50, seed=1, top_k=3, prime="All:"),
    SampleConfig(length=70, greedy=True),
    SampleConfig(length=900, seed=2, temperature=0.7, top_p=0.9, num_samples=2, prime="Speak"),
    SampleConfig(length=1, seed=5),
    SampleConfig(length=0, seed=5),
]


@pytest.mark.hw
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_concurrent_jobs_get_charnn_sample_text(kind):
    """Jobs that join and leave one batch each get the text `charnn sample` gives with that seed."""
    model = model_of(kind)
    sink = Collector()
    engine = Engine(model, VOCAB, sink, max_batch=8)
    jobs = [job_of(cfg) for cfg in CONFIGS]
    run_jobs(engine, jobs)
    for cfg, job in zip(CONFIGS, jobs, strict=True):
        want = [text[len(cfg.prime or "") :] for text in sample_text(model, VOCAB, cfg)]
        assert sink.texts[id(job)] == want and sink.ends[id(job)] == "complete", cfg


def test_a_byte_level_model_streams_utf8_text():
    vocab = Vocab(tuple(range(256)), bytes_mode=True)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model="gru", layers=1, hidden=16, embed=8), len(vocab)).eval()
    cfg = SampleConfig(length=400, seed=2, temperature=1.0)
    sink = Collector()
    job = Job(cfg, prime_ids(vocab, None)[0], handle=threading.Event())
    run_jobs(Engine(model, vocab, sink, max_batch=2, flush_every=0.0), [job])  # many outputs: split bytes
    assert sink.texts[id(job)] == [sample_text(model, vocab, cfg)[0].decode("utf-8", "replace")]


@pytest.mark.hw
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_logits_batched_with_others_equal_logits_alone(kind):
    """One request's logits at every position, alone and while others join and leave around it (the batch
    moving through sizes 1 to 8 and their kernels), agree to 1e-5."""
    model = model_of(kind)
    cfg = SampleConfig(length=400, seed=9, temperature=0.9, prime="Before")
    alone = job_of(cfg, keep_logits=True)
    run_jobs(Engine(model, VOCAB, Collector(), max_batch=8, tuning=SWITCHING), [alone])
    batched = job_of(cfg, keep_logits=True)
    others = [
        job_of(SampleConfig(length=n, seed=n, prime=p, num_samples=s, top_k=k))
        for n, p, s, k in ((150, "You", 3, None), (60, "Speak", 1, 4), (390, None, 2, None), (20, "a", 1, 2))
    ]
    sink = Collector()
    engine = Engine(model, VOCAB, sink, max_batch=8, tuning=SWITCHING)
    run_jobs(engine, [batched, *others], stagger=True)
    assert {1, 8} <= set(engine.rows._steppers)  # it ran alone, and in a full batch of 8
    assert len(alone.logits) == len(batched.logits) == cfg.length
    err = max((a - b).abs().max().item() for a, b in zip(alone.logits, batched.logits, strict=True))
    print(f"largest difference {err:.2e}")
    assert err < 1e-5, err
    assert all(sink.ends[id(j)] == "complete" for j in others)


def test_a_cancelled_job_frees_its_rows_and_the_queue_moves():
    model = model_of()
    sink = Collector()
    engine = Engine(model, VOCAB, sink, max_batch=2)
    long = job_of(SampleConfig(length=10**6, seed=1, num_samples=2))
    waiting = job_of(SampleConfig(length=30, seed=2))
    engine.start()
    try:
        engine.submit(long)
        engine.submit(waiting)
        assert sink.first.wait(10)
        assert engine.streams == 2 and engine.waiting == 1  # the second job waits for a free row
        long.cancelled = True
        assert waiting.handle.wait(10) and long.handle.wait(10)
        assert sink.ends[id(long)] == "cancelled" and sink.ends[id(waiting)] == "complete"
        assert len(sink.texts[id(waiting)][0]) == 30 and engine.streams == 0
    finally:
        engine.close()
        engine.join(5)


def test_too_many_waiting_and_closing_refuse_new_jobs():
    engine = Engine(model_of(), VOCAB, Collector(), max_batch=1, max_waiting=2)
    engine.submit(job_of(SampleConfig(length=5)))
    engine.submit(job_of(SampleConfig(length=5)))
    with pytest.raises(ServerBusy, match="too many requests waiting"):
        engine.submit(job_of(SampleConfig(length=5)))
    with pytest.raises(ServerBusy, match="--max-batch 1"):
        Engine(model_of(), VOCAB, Collector(), max_batch=1).submit(job_of(SampleConfig(num_samples=2)))
    engine.start()
    engine.close()
    engine.join(5)
    with pytest.raises(ServerBusy, match="shutting down"):
        engine.submit(job_of(SampleConfig(length=5)))


def test_importing_the_package_imports_no_fastapi_or_torch():
    code = "import charnn, charnn.serve, sys; print(sorted({'fastapi', 'uvicorn', 'torch'} & set(sys.modules)))"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=cli_env())
    assert out.stdout.strip() == "[]", out.stderr


def test_missing_fastapi_is_one_line_and_exit_2(tmp_path):
    code = (
        "import sys\nsys.modules['fastapi'] = None\nsys.argv = ['charnn', 'serve', sys.argv[1]]\n"
        "from charnn.cli.commands import main\nmain()"
    )
    out = subprocess.run([PYTHON, "-c", code, str(tmp_path)], capture_output=True, text=True, env=cli_env())
    assert out.returncode == 2
    want = "error: charnn serve needs FastAPI, uvicorn and fastapi-offline: pip install 'charnn[serve]'"
    assert out.stderr.strip() == want


# --- the API in-process ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random model with the tiny corpus's vocabulary, saved as a model file."""
    from charnn.store.checkpoint import model_bytes

    path = tmp_path_factory.mktemp("serve") / "model.safetensors"
    path.write_bytes(model_bytes(model_of(), VOCAB, DataConfig(), step=7, val_loss=2.5, corpus_sha256=""))
    return path


@pytest.fixture(scope="module")
def client(checkpoint):
    if not HTTP:
        pytest.skip("needs fastapi, uvicorn and httpx")
    from fastapi.testclient import TestClient

    from charnn.serve import create_app
    from charnn.store.checkpoint import load_model

    app = create_app(load_model(checkpoint), max_batch=4, max_length=500, max_body=4096)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.loaded = load_model(checkpoint)
        yield test_client


def sse(text: str) -> list[tuple[str, dict]]:
    """(event, data) of each Server-Sent Event in a response body."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


BAD = [
    ('{"prime": "First",', 400, "malformed JSON: Expecting property name enclosed in double quotes"),
    ("[1, 2]", 422, "body: Input should be a valid dictionary"),
    ('{"prime": "Fir\u00e9"}', 422, "prime: 1 character not in this model's vocabulary: '\u00e9'"),
    ('{"length": 501}', 422, "length: 501 characters is over this server's limit of 500 (--max-length)"),
    ('{"length": -1}', 422, "length: Input should be greater than or equal to 0"),
    ('{"temperature": 0}', 422, "temperature: Input should be greater than or equal to 0.01"),
    ('{"temperature": -1.5}', 422, "temperature: Input should be greater than or equal to 0.01"),
    ('{"top_p": 0}', 422, "top_p: Input should be greater than 0"),
    ('{"top_p": 1.01}', 422, "top_p: Input should be less than or equal to 1"),
    ('{"top_k": 0}', 422, "top_k: Input should be greater than or equal to 1"),
    ('{"length": "5"}', 422, "length: Input should be a valid integer"),
    ('{"greedy": 1}', 422, "greedy: Input should be a valid boolean"),
    ('{"seed": 1.5}', 422, "seed: Input should be a valid integer"),
    ('{"num_samples": 5}', 422, "num_samples: at most 4 (this server's --max-batch)"),
    ('{"temprature": 1}', 422, "temprature: Extra inputs are not permitted"),
    ('{"prime": "' + "a" * 4100 + '"}', 413, "request body over 4096 bytes"),
]


@needs_http
@pytest.mark.parametrize(("body", "status", "error"), BAD, ids=[f"{s}-{e.split(':')[0]}" for _, s, e in BAD])
def test_bad_generate_requests_get_one_line_errors(client, body, status, error):
    """Each is a 4xx with one line; pydantic's own wording may change between versions: its start is checked."""
    answer = client.post("/v1/generate", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status and list(answer.json()) == ["error"]
    message = answer.json()["error"]
    assert message.startswith(error) and "\n" not in message, message


@needs_http
def test_other_bad_requests_and_a_bug_leave_the_server_up(client, monkeypatch):
    def chunks():  # no Content-Length: the size is counted as the body arrives
        yield b'{"text": "'
        yield b"a" * 5000
        yield b'"}'

    answer = client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()) == (413, {"error": "request body over 4096 bytes"})
    answer = client.post("/v1/score", json={"text": "First\u00e9\u00e8"})
    assert answer.json() == {"error": "text: 2 characters not in this model's vocabulary: '\u00e8', '\u00e9'"}
    assert client.post("/v1/next", json={"text": "a", "k": 0}).status_code == 422
    assert client.get("/v1/nothing").json() == {"error": "Not Found"}
    assert client.get("/v1/generate").status_code == 405
    monkeypatch.setattr("charnn.serve.app.evaluate_ids", lambda *a, **k: 1 / 0)  # a bug
    answer = client.post("/v1/score", json={"text": "First"})
    assert (answer.status_code, answer.json()) == (500, {"error": "internal server error (see the server log)"})
    assert client.get("/healthz").json() == {"status": "ok", "streams": 0, "waiting": 0}


@needs_http
def test_generate_json_and_stream_give_charnn_sample_text(client):
    cfg = SampleConfig(length=120, seed=4, temperature=0.9, prime="First", num_samples=2)
    want = [text[len("First") :] for text in sample_text(client.loaded.model, VOCAB, cfg)]
    body = {"prime": "First", "length": 120, "seed": 4, "temperature": 0.9, "num_samples": 2}
    assert client.post("/v1/generate", json=body).json() == {"texts": want, "chars": 240}
    answer = client.post("/v1/generate", json={**body, "stream": True})
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = sse(answer.text)
    assert events[-1] == ("done", {"chars": 240, "complete": True})
    got = ["", ""]
    for event, data in events[:-1]:
        assert event == "message"
        got[data["index"]] += data["text"]
    assert got == want


@needs_http
def test_score_is_charnn_eval_of_the_same_text(client, tmp_path):
    from charnn.evaluate import evaluate_file

    text = TINY_TEXT[:400]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    want = evaluate_file(client.loaded, tmp_path / "t.txt", segment=client.loaded.eval_segment).as_dict()
    got = client.post("/v1/score", json={"text": text.replace("\n", "\r\n")}).json()  # read as a file is
    assert got.keys() == want.keys() and got["chars"] == want["chars"] == 399
    assert all(got[k] == pytest.approx(want[k], rel=1e-6) for k in want)
    skipped = client.post("/v1/score", json={"text": "Fir\u00e9st", "skip_unknown": True}).json()
    assert skipped["unknown_chars"] == 1 and skipped["chars"] == 4
    assert client.post("/v1/score", json={"text": "F"}).json()["nats_per_char"] is None  # nothing to score
    bits = client.post("/v1/score", json={"text": text, "per_char": True}).json()["bits"]  # each after the first
    assert len(bits) == 399 and sum(bits) / 399 * math.log(2) == pytest.approx(want["nats_per_char"], rel=1e-5)
    assert client.post("/v1/score", json={"text": "F", "per_char": True}).json()["bits"] == []


@needs_http
def test_next_gives_the_k_most_likely_characters(client):
    answer = client.post("/v1/next", json={"text": "First Citi", "k": 3}).json()["next"]
    ids = torch.tensor([VOCAB.encode("First Citi").tolist()])
    with torch.no_grad():
        probs = client.loaded.model(ids)[0][0, -1].softmax(-1)
    top = probs.topk(3)
    assert [a["symbol"] for a in answer] == [VOCAB.symbols[i] for i in top.indices.tolist()]
    assert [a["prob"] for a in answer] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert answer[0]["char"] == chr(answer[0]["symbol"])
    assert len(client.post("/v1/next", json={"text": "", "k": 1000}).json()["next"]) == len(VOCAB)


@needs_http
def test_model_page_and_docs(client):
    info = client.get("/v1/model").json()
    assert info["step"] == 7 and info["val_loss"] == 2.5 and info["vocab_size"] == len(VOCAB)
    assert info["model"]["hidden"] == 24 and info["max_batch"] == 4 and info["checkpoint"] == "model.safetensors"
    assert "".join(info["vocab"]) == "".join(map(chr, VOCAB.symbols))
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "textContent" in page.text and "innerHTML" not in page.text and "v1/next" in page.text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/v1/model", "/v1/generate", "/v1/score", "/v1/next"} <= set(paths)


# --- a real server ---------------------------------------------------------------------------------------


def start_server(checkpoint: Path, *args: str) -> tuple[subprocess.Popen, str, list[str]]:
    """`charnn serve` on a free loopback port: the process, its URL, and its stderr lines so far."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "charnn", "serve", str(checkpoint), "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )
    lines: list[str] = []
    while True:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the server did not start: {''.join(lines)}")
        lines.append(line)
        if found := re.search(r"http://\S+:(\d+)", line):
            break
    threading.Thread(target=lambda: [lines.append(x) for x in proc.stderr], daemon=True).start()
    url = f"http://127.0.0.1:{found.group(1)}"
    import httpx

    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return proc, url, lines
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("no answer from /healthz")


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@needs_http
def test_server_streams_many_clients_frees_left_slots_and_stops_on_sigterm(checkpoint):
    import httpx

    proc, url, _ = start_server(checkpoint, "--max-length", "10000000", "--max-batch", "8", "--grace", "0")
    try:
        model = client_model(checkpoint)
        results = {}

        def one(seed: int) -> None:
            body = {"length": 300, "seed": seed, "prime": "All", "stream": True}
            with httpx.stream("POST", f"{url}/v1/generate", json=body, timeout=30) as answer:
                results[seed] = sse(answer.read().decode())

        threads = [threading.Thread(target=one, args=(seed,)) for seed in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for seed, events in results.items():
            want = sample_text(model, VOCAB, SampleConfig(length=300, seed=seed, prime="All"))[0][3:]
            assert "".join(d["text"] for e, d in events if e == "message") == want
            assert events[-1] == ("done", {"chars": 300, "complete": True})
        assert len(results) == 6

        health = lambda: httpx.get(f"{url}/healthz").json()  # noqa: E731
        with httpx.stream("POST", f"{url}/v1/generate", json={"length": 10**7, "stream": True}) as answer:
            lines = answer.iter_lines()  # kept: a dropped iterator closes the response
            assert next(lines).startswith("data: ")  # the first characters arrived: the stream runs
            assert health()["streams"] == 1
        assert wait_until(lambda: health()["streams"] == 0, 3.0), "a client that left kept its row"

        open_stream = httpx.stream("POST", f"{url}/v1/generate", json={"length": 10**7, "stream": True}, timeout=30)
        answer = open_stream.__enter__()
        lines = answer.iter_lines()
        next(lines)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = "\n".join(lines)
        assert proc.wait(timeout=10) == 0 and time.monotonic() - started < 5
        final = sse(rest)[-1]
        assert final[0] == "done" and final[1]["complete"] is False and "shutting down" in final[1]["reason"]
        open_stream.__exit__(None, None, None)
    finally:
        proc.kill()
        proc.wait()


def client_model(checkpoint: Path) -> CharRNN:
    from charnn.store.checkpoint import load_model

    return load_model(checkpoint).model


@needs_http
def test_open_host_warns_and_sigint_stops_cleanly(checkpoint):
    proc, url, lines = start_server(checkpoint, "--host", "0.0.0.0")
    try:
        assert lines[0].startswith("warning: --host 0.0.0.0: anyone who can reach this machine")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


@needs_http
def test_a_port_in_use_is_one_line(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [PYTHON, "-m", "charnn", "serve", str(checkpoint), "--port", str(port)],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=60,
        )
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


# --- the playground page, served ------------------------------------------------------------------------


@needs_http
def test_served_playground_asks_the_server_and_writes_with_it(checkpoint, tmp_path):
    """GET / is the export playground without weights: in a browser, its seeded text is `charnn sample`'s with
    that seed, its Tab takes the likeliest character after the box's text, and it colours each by surprise."""
    from tests.test_export import CHROMIUM, PROBE, open_url

    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium")
    import uvicorn
    from fastapi.responses import HTMLResponse

    from charnn.serve import create_app
    from charnn.store.checkpoint import load_model

    app = create_app(load_model(checkpoint), max_batch=4, max_length=500)

    @app.get("/probed")
    async def probed() -> HTMLResponse:  # the served page with the test's typing script
        return HTMLResponse(app.state.page.replace("</body>", PROBE + "</body>"))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, 20)
        url = f"http://127.0.0.1:{port}"
        import httpx

        app.state.page = httpx.get(url + "/").text
        assert '<script type="application/octet-stream" id="charnn-weights"></script>' in app.state.page
        assert "connect-src 'self'" in app.state.page
        got = open_url(url + "/", tmp_path / "profile", prime="First", length=80, seed=5, autorun=1)
        want = sample_text(client_model(checkpoint), VOCAB, SampleConfig(length=80, seed=5, prime="First"))[0]
        assert got["console"] == [] and 'data-done="1"' in got["attrs"] and "data-error" not in got["attrs"]
        assert got["output"] == want

        got = open_url(url + "/probed", tmp_path / "profile")
        ids = torch.tensor([VOCAB.encode("\nFirst Citizen").tolist()])
        with torch.no_grad():
            best = int(client_model(checkpoint)(ids)[0][0, -1].argmax())
        typed = json.loads(html.unescape(re.search(r'data-probed="([^"]*)"', got["dom"])[1]))
        assert typed == "First Citizen" + chr(VOCAB.symbols[best])
        predictions = re.search(r'<ol id="predictions"[^>]*>(.*?)</ol>', got["dom"], re.S)[1]
        assert predictions.count("<li>") == 5 and "%" in predictions
        view = re.search(r'<div id="surprise-view"[^>]*>(.*?)</div>', got["dom"], re.S)[1]
        assert view.count("<span") == len(typed) and view.count("bits") == len(typed)
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_servers_connections_send_without_waiting_for_acks():
    """Answers go out at once on a kept-alive connection: the listening socket says TCP, so asyncio sets
    TCP_NODELAY on each connection (without it every answer after a connection's first waited ~40 ms for the
    client's delayed ACK)."""
    import asyncio

    from charnn.serve.server import bind

    async def accepted_nodelay() -> int:
        found: asyncio.Future = asyncio.get_running_loop().create_future()

        def connected(reader, writer) -> None:
            sock = writer.get_extra_info("socket")
            found.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = bind("127.0.0.1", 0)
        server = await asyncio.start_server(connected, sock=listener)
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        value = await asyncio.wait_for(found, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
