"""`charnn serve`'s OpenAI-compatible API, several models and Prometheus metrics: OpenAI's own client against a
live server with two models on loopback, and the pieces (stop texts, model names) without one. The server tests
skip without the serve extra or the `openai` package."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from charnn.config import DataConfig, SampleConfig
from charnn.errors import CharnnError
from charnn.sampling.generate import sample_text
from tests.conftest import PYTHON, REPO, cli_env
from tests.test_serve import VOCAB, model_of

SEEDS = {"tiny": 0, "other": 1}  # the served models: name -> the seed of its random weights


def test_stop_texts_cut_the_text_even_across_chunks():
    from charnn.serve.openai_replies import Choice

    choice = Choice(0, None, 0, ("ab", "xyz"))
    for piece in ("12x", "y", "3a", "b456"):
        choice.feed(piece)
    assert (choice.text, choice.finish) == ("12xy3", "stop")  # "xy" held back, then let go at "3"
    choice = Choice(0, None, 0, ("ab",))
    choice.feed("1a")
    assert choice.text == "1"  # "a" could begin a stop text
    choice.end()
    assert (choice.text, choice.finish) == ("1a", "length")


def test_served_names_come_from_name_equals_run_or_the_directory(tmp_path):
    pytest.importorskip("fastapi")
    from charnn.serve.models import served_runs

    (tmp_path / "lyrics").mkdir()
    (tmp_path / "x=y").mkdir()
    runs = served_runs([str(tmp_path / "lyrics"), f"p={tmp_path / 'lyrics'}", str(tmp_path / "x=y")])
    assert [name for name, _ in runs] == ["lyrics", "p", "x=y"]
    with pytest.raises(CharnnError, match="two models named 'lyrics': name them apart with NAME=RUN"):
        served_runs([str(tmp_path / "lyrics"), f"lyrics={tmp_path}"])
    with pytest.raises(CharnnError, match="one word without spaces"):
        served_runs([f"a b={tmp_path}"])


# --- a live server with two models --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`charnn serve tiny=... other=...` on a free loopback port: (URL, {name: checkpoint})."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    pytest.importorskip("openai")
    from charnn.store.checkpoint import model_bytes
    from tests.test_serve import start_server

    paths = {}
    for name, seed in SEEDS.items():
        path = tmp_path_factory.mktemp(name) / "model.safetensors"
        path.write_bytes(model_bytes(model_of(seed=seed), VOCAB, DataConfig(), step=1, val_loss=2.5, corpus_sha256=""))
        paths[name] = path
    proc, url, _ = start_server(*(f"{n}={p}" for n, p in paths.items()), "--max-batch", "4", "--max-length", "2000")
    try:
        yield url, paths
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=10) == 0  # every model's engine stopped
        finally:
            proc.kill()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=30)


def want(name: str, cfg: SampleConfig) -> list[str]:
    """`charnn sample`'s texts from model `name` (the prime cut off)."""
    return [text[len(cfg.prime or "") :] for text in sample_text(model_of(seed=SEEDS[name]), VOCAB, cfg)]


def test_models_list_names_every_served_model(client):
    assert [m.id for m in client.models.list()] == ["tiny", "other"]
    assert client.models.retrieve("other").owned_by == "charnn"


def test_a_seeded_completion_is_charnn_sample_text(client, server):
    got = client.completions.create(model="tiny", prompt="First", max_tokens=80, temperature=0.9, seed=5)
    args = ["--prime", "First", "--length", "80", "--temperature", "0.9", "--seed", "5"]
    sample = subprocess.run(
        [PYTHON, "-m", "charnn", "sample", str(server[1]["tiny"]), *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO,
        timeout=60,
    )
    assert sample.stdout == "First" + got.choices[0].text + "\n"
    assert got.choices[0].finish_reason == "length" and got.model == "tiny" and got.object == "text_completion"
    assert (got.usage.prompt_tokens, got.usage.completion_tokens, got.usage.total_tokens) == (5, 80, 85)


def test_n_choices_streamed_or_not_are_charnn_sample_num_samples(client):
    cfg = SampleConfig(length=60, temperature=1.0, top_p=0.9, seed=3, prime="All", num_samples=3)
    texts = want("tiny", cfg)
    whole = client.completions.create(model="tiny", prompt="All", max_tokens=60, top_p=0.9, seed=3, n=3)
    assert [c.text for c in whole.choices] == texts and [c.index for c in whole.choices] == [0, 1, 2]
    streamed = ["", "", ""]
    finishes = {}
    for chunk in client.completions.create(
        model="tiny", prompt="All", max_tokens=60, top_p=0.9, seed=3, n=3, stream=True
    ):
        for c in chunk.choices:
            streamed[c.index] += c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert streamed == texts and finishes == {0: "length", 1: "length", 2: "length"}


def test_stop_ends_each_choice_before_its_stop_text(client):
    cfg = SampleConfig(length=300, temperature=1.0, seed=8, prime="Speak", num_samples=2)
    full = want("tiny", cfg)
    got = client.completions.create(model="tiny", prompt="Speak", max_tokens=300, seed=8, n=2, stop=["e", "ou"])
    for choice, text in zip(got.choices, full, strict=True):
        cut = min(i for i in (text.find("e"), text.find("ou"), len(text)) if i >= 0)
        assert choice.text == text[:cut] and choice.finish_reason == "stop"
    assert got.usage.completion_tokens == sum(len(c.text) for c in got.choices)


def test_logprobs_are_the_models_own_with_the_top_alternatives(client):
    got = client.completions.create(model="tiny", prompt="First", max_tokens=30, seed=2, logprobs=3).choices[0]
    assert got.logprobs.tokens == list(got.text) and got.logprobs.text_offset == list(range(30))
    ids = torch.tensor([VOCAB.encode("First" + got.text).tolist()])
    with torch.no_grad():
        logp = model_of(seed=0)(ids)[0][0, 4:-1].log_softmax(-1)  # each generated character's distribution
    expected = logp.gather(1, ids[0, 5:, None])[:, 0].tolist()
    assert got.logprobs.token_logprobs == pytest.approx(expected, abs=1e-4)
    for top, row in zip(got.logprobs.top_logprobs, logp, strict=True):
        best = row.topk(3)
        assert list(top) == [chr(VOCAB.symbols[i]) for i in best.indices.tolist()]
        assert list(top.values()) == pytest.approx(best.values.tolist(), abs=1e-4)


def test_chat_streams_the_templated_prompts_continuation(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Speak, speak."}]
    text, roles, finish = "", set(), None
    for chunk in client.chat.completions.create(
        model="other", messages=messages, max_tokens=50, seed=4, temperature=0.7, stream=True
    ):
        assert chunk.object == "chat.completion.chunk" and chunk.model == "other"
        for c in chunk.choices:
            text += c.delta.content or ""
            roles.add(c.delta.role)
            finish = c.finish_reason or finish
    prompt = "System: Be brief.\nUser: Speak, speak.\nAssistant:"
    prompt = "".join(ch for ch in prompt if ord(ch) in VOCAB.symbols)  # what the vocabulary lacks is left out
    assert text == want("other", SampleConfig(length=50, temperature=0.7, seed=4, prime=prompt))[0]
    assert "assistant" in roles and finish == "length"


def test_two_models_answer_under_their_names(client, server):
    import httpx

    cfg = SampleConfig(length=40, temperature=1.0, seed=6, prime="You")
    for name in SEEDS:
        got = client.completions.create(model=name, prompt="You", max_tokens=40, seed=6)
        assert got.model == name and got.choices[0].text == want(name, cfg)[0]
    native = httpx.post(f"{server[0]}/v1/generate", json={"model": "other", "prime": "You", "length": 40, "seed": 6})
    assert native.json()["texts"] == want("other", SampleConfig(length=40, seed=6, prime="You"))
    assert httpx.get(f"{server[0]}/v1/model", params={"model": "other"}).json()["step"] == 1


def test_refusals_are_in_openais_shape_and_raise_the_clients_errors(client, server):
    import httpx
    import openai

    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny", prompt="Fir\u00e9", max_tokens=5)
    assert bad.value.param == "prompt"
    assert "prompt: 1 character not in this model's vocabulary: '\u00e9'" in str(bad.value)
    with pytest.raises(openai.BadRequestError, match="presence_penalty: not supported"):
        client.completions.create(model="tiny", prompt="a", presence_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match="max_tokens: 5000 characters is over this server's limit"):
        client.completions.create(model="tiny", prompt="a", max_tokens=5000)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nothing", prompt="a")
    assert missing.value.code == "model_not_found"
    answer = httpx.post(f"{server[0]}/v1/chat/completions", json={"model": "nothing", "messages": []})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "messages"
    answer = httpx.post(f"{server[0]}/v1/completions", json={"model": "nothing", "prompt": "a"})
    assert answer.status_code == 404 and answer.json() == {
        "error": {
            "message": "model: no model named 'nothing' is served here (served: tiny, other)",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    answer = httpx.post(f"{server[0]}/v1/completions", json={"prompt": "a", "suffix": "b", "temprature": 1})
    assert answer.json()["error"]["message"] == "temprature: Extra inputs are not permitted"
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    answer = httpx.post(f"{server[0]}/v1/chat/completions", json={"messages": [image]})
    assert answer.json()["error"]["message"].startswith("messages.0.content: only text parts")
    with pytest.raises(openai.BadRequestError, match=r"n: at most 4 \(this server's --max-batch\)"):
        client.completions.create(model="tiny", prompt="a", n=5)
    for path in ("generate", "score", "next"):
        answer = httpx.post(
            f"{server[0]}/v1/{path}",
            json={"model": "nothing", "text": "a"} if path != "generate" else {"model": "nothing"},
        )
        assert answer.status_code == 404 and answer.json()["error"].startswith("model: no model named 'nothing'")


def test_metrics_count_what_was_sent(client, server):
    import httpx
    import openai
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        text = httpx.get(f"{server[0]}/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def grew(before: dict, after: dict, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    before = scrape()
    client.completions.create(model="other", prompt="a", max_tokens=25, seed=0)
    for seed in (1, 2):  # streamed: timed to their first characters
        assert (
            len(
                "".join(
                    c.choices[0].text
                    for c in client.completions.create(model="other", prompt="a", max_tokens=25, seed=seed, stream=True)
                )
            )
            == 25
        )
    with pytest.raises(openai.BadRequestError):  # refused once the model is known: counted under its name
        client.completions.create(model="other", prompt="a", presence_penalty=1.0)
    after = scrape()
    endpoint = {"model": "other", "endpoint": "/v1/completions"}
    assert grew(before, after, "charnn_requests_total", status="200", **endpoint) == 3
    assert grew(before, after, "charnn_requests_total", status="400", **endpoint) == 1
    assert grew(before, after, "charnn_request_duration_seconds_count", **endpoint) == 4
    assert grew(before, after, "charnn_generated_characters_total", model="other") == 75
    assert grew(before, after, "charnn_time_to_first_character_seconds_count", model="other") == 2
    assert grew(before, after, "charnn_batch_size_count", model="other") >= 3 * 24  # one per step after the first
    assert after[("charnn_streams_generating", (("model", "other"),))] == 0
    assert after[("charnn_requests_waiting", (("model", "tiny"),))] == 0
    assert not math.isnan(after[("charnn_batch_size_sum", (("model", "other"),))])


def test_missing_prometheus_client_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    code = (
        "import sys\nsys.modules['prometheus_client'] = None\nsys.argv = ['charnn', 'serve', sys.argv[1]]\n"
        "from charnn.cli.commands import main\nmain()"
    )
    out = subprocess.run([PYTHON, "-c", code, str(tmp_path)], capture_output=True, text=True, env=cli_env())
    assert out.returncode == 2
    assert out.stderr.strip() == "error: charnn serve needs prometheus-client for /metrics: pip install 'charnn[serve]'"


def test_serving_two_models_under_one_name_is_one_error_line(tmp_path):
    path = Path(tmp_path)
    out = subprocess.run(
        [PYTHON, "-m", "charnn", "serve", f"a={path}", f"a={path}"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    if "needs" in out.stderr:
        pytest.skip("needs the serve extra")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: two models named 'a': name them apart with NAME=RUN"


def test_sigterm_ends_the_open_streams_of_every_model(tmp_path):
    """Each model's engine is stopped: an open OpenAI stream on the second model ends at once, and the server
    exits 0."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    import httpx

    from charnn.store.checkpoint import model_bytes
    from tests.test_serve import start_server

    path = tmp_path / "model.safetensors"
    path.write_bytes(model_bytes(model_of(), VOCAB, DataConfig(), step=1, val_loss=2.5, corpus_sha256=""))
    proc, url, _ = start_server(f"a={path}", f"b={path}", "--max-length", "10000000", "--grace", "0")
    try:
        body = {"model": "b", "prompt": "a", "max_tokens": 10**7, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as answer:
            lines = answer.iter_lines()
            assert next(lines).startswith("data: {")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert proc.wait(timeout=10) == 0 and time.monotonic() - started < 5
        assert json.loads(rest[-1].removeprefix("data: "))["error"]["message"] == "the server is shutting down"
    finally:
        proc.kill()
        proc.wait()


def test_the_engine_in_its_own_process_gives_the_same_text_cancels_and_stops(tmp_path):
    """`--engine process`: seeded text as `charnn sample`'s, logprobs, a client that leaves frees its row, and
    SIGTERM ends an open stream and the server (exit 0)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    import httpx

    from charnn.store.checkpoint import model_bytes
    from tests.test_serve import sse, start_server, wait_until

    path = tmp_path / "model.safetensors"
    path.write_bytes(model_bytes(model_of(), VOCAB, DataConfig(), step=1, val_loss=2.5, corpus_sha256=""))
    proc, url, _ = start_server(
        path, "--engine", "process", "--max-batch", "4", "--max-length", "10000000", "--grace", "0"
    )
    try:
        cfg = SampleConfig(length=150, seed=3, temperature=0.9, prime="First", num_samples=2)
        body = {"prime": "First", "length": 150, "seed": 3, "temperature": 0.9, "num_samples": 2}
        assert httpx.post(f"{url}/v1/generate", json=body, timeout=30).json()["texts"] == want("tiny", cfg)
        body = {"prompt": "First", "max_tokens": 20, "seed": 3, "logprobs": 2}
        got = httpx.post(f"{url}/v1/completions", json=body, timeout=30).json()["choices"][0]
        assert got["text"] == want("tiny", SampleConfig(length=20, seed=3, temperature=1.0, prime="First"))[0]
        assert len(got["logprobs"]["token_logprobs"]) == 20

        health = lambda: httpx.get(f"{url}/healthz").json()  # noqa: E731
        with httpx.stream("POST", f"{url}/v1/generate", json={"length": 10**7, "stream": True}) as answer:
            lines = answer.iter_lines()  # kept: a dropped iterator closes the response
            assert next(lines).startswith("data: ")
            assert wait_until(lambda: health()["streams"] == 1, 3.0)
        assert wait_until(lambda: health()["streams"] == 0, 3.0), "a client that left kept its row"

        with httpx.stream("POST", f"{url}/v1/generate", json={"length": 10**7, "stream": True}, timeout=30) as answer:
            lines = answer.iter_lines()
            next(lines)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rest = "\n".join(lines)
        assert proc.wait(timeout=10) == 0 and time.monotonic() - started < 5
        final = sse(rest)[-1]
        assert final[0] == "done" and final[1]["complete"] is False and "shutting down" in final[1]["reason"]
    finally:
        proc.kill()
        proc.wait()
