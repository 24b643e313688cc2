"""GPU failures simulated on the CPU: a CUDA-graph capture or replay that fails falls back to eager steps (same
text, one warning); device errors a user can cause are one line and their exit code; `--precision auto` on
cards without bf16 (the capability check faked) picks fp16 with loss scaling, or fp32; the fp16 loss scaler
with the CUDA guard; --deterministic; Apple's MPS self-check with a faulty device injected.
"""

import math
import os
import warnings

import pytest
import torch
from typer.testing import CliRunner

from charnn.cli.commands import app
from charnn.config import ModelConfig, SampleConfig, TrainConfig
from charnn.devicecheck import GRADIENT_TOLERANCE, dropout_gradient_gap, reference_outputs, self_check
from charnn.errors import CharnnWarning, ConfigError, DeviceError, OutOfMemoryError
from charnn.model import CharRNN
from charnn.runtime import (
    autocast_dtype,
    nondeterministic_allowed,
    pick_device,
    set_deterministic,
    user_device_error,
    wide_float,
)
from charnn.sampling import generate as sample
from charnn.sampling.cudagraph import GraphStep
from charnn.sampling.stepper import Tuning
from charnn.store.rundir import load_run
from charnn.training.setup import hardware
from charnn.training.step import StepStats, make_optimizer, make_scaler, optimisation_step
from tests.conftest import TINY_FLAGS

runner = CliRunner()
CUDA = torch.device("cuda")
TINY = [
    *TINY_FLAGS,
    "--max-iters",
    "4",
    "--eval-every",
    "4",
    "--sample-length",
    "0",
    "--quiet",
    "--device",
    "cpu",
    "--no-cache",
]


def invoke(*args):
    return runner.invoke(app, list(map(str, args)), env={"COLUMNS": "200"})


def one_line(res, code: int, prefix: str = "error: ") -> str:
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), res.stderr
    assert "Traceback" not in res.output
    return lines[0]


# --- CUDA graphs: capture or replay failing ------------------------------------------------------------------


class ReplayingGraph:
    """A stand-in for a captured CUDA graph on the CPU: replay runs the captured body; it can fail at replay n."""

    def __init__(self, step: GraphStep, fail_at: int | None = None) -> None:
        self.step, self.fail_at, self.replays = step, fail_at, 0

    def replay(self) -> None:
        self.replays += 1
        if self.replays == self.fail_at:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        self.step._body()


def graphs_on_the_cpu(monkeypatch, capture) -> None:
    """Send the CPU through GraphStep, with `capture(self, stepper)` in place of the CUDA capture."""
    monkeypatch.setattr(sample, "_uses_graph", lambda device, tuning, stepper: stepper is not None)
    monkeypatch.setattr(GraphStep, "_capture", capture)


def sampled_with_warnings(loaded, cfg) -> tuple[list, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = sample.sample_text(loaded.model, loaded.vocab, cfg)
    return texts, [str(w.message) for w in caught if issubclass(w.category, CharnnWarning)]


CFG = SampleConfig(length=90, seed=4, num_samples=3, prime="First")


def test_a_failed_capture_steps_eagerly_with_one_warning_and_the_same_text(tiny_run, monkeypatch):
    loaded = load_run(tiny_run)
    want = sample.sample_text(loaded.model, loaded.vocab, CFG, tuning=Tuning(cuda_graphs=False))

    def refuse(self, stepper):
        stepper.step(self.ids_in)  # the warm-up steps the state before capture fails: it must be undone
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")

    graphs_on_the_cpu(monkeypatch, refuse)
    texts, caught = sampled_with_warnings(loaded, CFG)
    assert texts == want
    assert caught == [
        "CUDA graph capture failed (CUDA error: operation not permitted when stream is capturing); "
        "sampling steps eagerly instead (same text, slower)"
    ]


@pytest.mark.parametrize("fail_at", [None, 1, 5])
def test_a_failed_replay_steps_eagerly_from_there_with_the_same_text(tiny_run, monkeypatch, fail_at):
    loaded = load_run(tiny_run)
    want = sample.sample_text(loaded.model, loaded.vocab, CFG, tuning=Tuning(cuda_graphs=False))
    graphs = []

    def capture(self, stepper):
        graphs.append(ReplayingGraph(self, fail_at))
        return graphs[-1]

    graphs_on_the_cpu(monkeypatch, capture)
    texts, caught = sampled_with_warnings(loaded, CFG)
    assert texts == want
    assert graphs[0].replays == (fail_at or CFG.length - 1)  # after a failure no graph is replayed again
    assert len(caught) == (fail_at is not None) and all("CUDA graph replay failed" in m for m in caught)


def test_the_cli_says_one_warning_line_when_capture_fails(tiny_run, monkeypatch):
    def refuse(self, stepper):
        raise RuntimeError("CUDA error: out of memory")

    want = invoke("sample", tiny_run, "--length", "40", "--seed", "3")
    graphs_on_the_cpu(monkeypatch, refuse)
    res = invoke("sample", tiny_run, "--length", "40", "--seed", "3")
    assert res.stdout == want.stdout
    assert one_line(res, 0, "warning: ").startswith("warning: CUDA graph capture failed (CUDA error: out of memory)")


# --- device errors the user can cause ------------------------------------------------------------------------


def test_out_of_memory_while_building_the_model_is_one_line_and_exit_5(tiny_corpus, tmp_path, monkeypatch):
    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.11 GiB total)")

    monkeypatch.setattr(CharRNN, "to", no_memory)
    line = one_line(invoke("train", tiny_corpus, "--out", tmp_path / "run", *TINY), OutOfMemoryError.exit_code)
    assert "out of memory" in line and "--batch-size" in line


def test_an_unsupported_dtype_in_a_training_step_is_one_line_and_exit_6(tiny_corpus, tmp_path, monkeypatch):
    def unsupported(*args, **kwargs):
        raise RuntimeError("\"addmm_cuda\" not implemented for 'BFloat16'")

    monkeypatch.setattr("charnn.training.step.lm_loss", unsupported)
    line = one_line(invoke("train", tiny_corpus, "--out", tmp_path / "run", *TINY), DeviceError.exit_code)
    assert "not implemented for 'BFloat16'" in line and "--precision fp32" in line


def test_a_card_without_kernels_is_one_line_when_sampling(tiny_run, monkeypatch):
    def no_kernels(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nCUDA kernel errors")

    monkeypatch.setattr("charnn.sampling.generate.FastStepper", no_kernels)
    line = one_line(invoke("sample", tiny_run, "--length", "5"), DeviceError.exit_code)
    assert line.startswith("error: this device cannot run it (CUDA error: no kernel image")


def test_other_runtime_errors_stay_bugs_with_their_traceback():
    assert user_device_error(RuntimeError("shape '[4, 7]' is invalid for input of size 30")) is None
    assert user_device_error(ValueError("out of memory")) is None
    assert isinstance(user_device_error(torch.OutOfMemoryError("x")), OutOfMemoryError)
    message = "The operator 'aten::_lstm_mps' is not currently implemented for the MPS device."
    assert isinstance(user_device_error(NotImplementedError(message)), DeviceError)


# --- precision on cards without bf16 (the capability check faked) --------------------------------------------


@pytest.fixture
def card(monkeypatch):
    """Make torch report a CUDA card of the given compute capability (bf16 natively from 8.0)."""

    def fake(capability: tuple[int, int], name: str = "Fake GPU") -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: capability[0] >= 8)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)

    return fake


@pytest.mark.parametrize(
    "capability, auto",
    [
        ((9, 0), torch.bfloat16),
        ((8, 0), torch.bfloat16),
        ((7, 5), torch.float16),
        ((7, 0), torch.float16),
        ((6, 1), None),
    ],
)
def test_precision_auto_follows_the_card(card, capability, auto):
    card(capability)
    assert autocast_dtype(CUDA, "auto", training=True) == auto
    assert autocast_dtype(CUDA, "auto") == auto  # evaluation the same way, so eval reproduces training's score
    assert autocast_dtype(CUDA, "fp32") is None and autocast_dtype(CUDA, "fp16") == torch.float16
    assert hardware(CUDA).native_bf16 == (auto == torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler("cuda") warns that this machine has no CUDA
        scaler = make_scaler(TrainConfig(device="cpu"), CUDA)
    assert (scaler is not None) == (auto == torch.float16)


def test_bf16_asked_of_a_card_without_it_is_one_clear_error(card):
    card((7, 5), "Tesla T4")
    with pytest.raises(DeviceError, match=r"--precision bf16: Tesla T4 has no native bf16 .*--precision auto"):
        autocast_dtype(CUDA, "bf16", training=True)


def test_fp16_is_refused_on_the_cpu(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match="fp16 is for CUDA GPUs"):
        autocast_dtype(torch.device("cpu"), "fp16")
    line = one_line(invoke("train", tiny_corpus, "--out", tmp_path / "run", *TINY, "--precision", "fp16"), 2)
    assert "--precision fp16 is for CUDA GPUs without bf16" in line


def test_fp16_training_is_refused_on_mps_which_has_no_loss_scaling_in_charnn():
    """Unscaled fp16 gradients underflow; charnn scales the loss on CUDA only. Sampling in fp16 stays allowed."""
    mps = torch.device("mps")
    with pytest.raises(ConfigError, match="fp16 trains with loss scaling on CUDA only"):
        autocast_dtype(mps, "fp16", training=True)
    assert autocast_dtype(mps, "fp16") == torch.float16 and autocast_dtype(mps, "auto", training=True) is None


def test_the_loss_scaler_fits_the_cuda_guard(card):
    """fp16's path end to end on CPU tensors: the step follows the `device` argument (CUDA: the fused AdamW's
    found_inf, no host read), the CPU's GradScaler and fused AdamW stand in. A scale that overflows the
    gradients skips the update (loss finite, gradients not) and is halved; at a sane scale the step is taken."""
    card((7, 5))
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(layers=1, hidden=8, embed=4), 5)
    with torch.no_grad():
        model.head.weight.mul_(1000)  # large gradients into the LSTM: times the scale they overflow fp32
    cfg = TrainConfig(device="cpu", precision="fp16", log_every=100)
    optimizer = make_optimizer(model, cfg, CUDA)
    assert all(group["fused"] for group in optimizer.param_groups)
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)
    stats, batch = StepStats.on(torch.device("cpu")), (torch.randint(5, (2, 6)), torch.randint(5, (2, 6)))
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.autocast("cuda") warns that this machine has no CUDA
        taken, hidden = optimisation_step(
            model, optimizer, batch, None, stats, cfg=cfg, device=CUDA, step=0, scaler=scaler
        )
        assert taken and all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
        assert scaler.get_scale() == pytest.approx(5e37) and int(stats.bad_run) == 1
        assert all(not h.any() for h in hidden)  # a skipped step restarts its streams
        scaler.update(1024.0)
        optimisation_step(model, optimizer, batch, hidden, stats, cfg=cfg, device=CUDA, step=1, scaler=scaler)
    assert not all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == 1024.0 and int(stats.bad_run) == 0 and math.isfinite(float(stats.grad_norm))
    assert float(stats.loss) > 0  # the taken step's loss (unscaled) is in the window's sum


def test_the_loss_scale_travels_with_the_training_state():
    """fp16's loss scale is saved with the optimizer and RNG states (weights_only-loadable) and restored on resume."""
    import io

    from charnn.store.trainstate import training_state

    model = CharRNN(ModelConfig(layers=1, hidden=8, embed=4), 5)
    optimizer = make_optimizer(model, TrainConfig(device="cpu"), torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale(torch.ones(()))  # the scale is made at first use
    scaler.update(512.0)
    buffer = io.BytesIO()
    torch.save(training_state(3, 1.0, 2.0, optimizer, None, TrainConfig(device="cpu"), scaler=scaler), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    resumed = torch.amp.GradScaler("cpu")
    resumed.load_state_dict(state["scaler"])
    assert resumed.get_scale() == 512.0


# --- --deterministic ----------------------------------------------------------------------------------------


def test_deterministic_sets_the_algorithms_and_the_cublas_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        with nondeterministic_allowed():  # what sampling's cumsum does on CUDA
            assert not torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_deterministic_flag_reaches_the_run(tiny_corpus, tmp_path):
    import json

    try:
        res = invoke("train", tiny_corpus, "--out", tmp_path / "run", *TINY, "--deterministic")
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["deterministic"] is True
    finally:
        set_deterministic(False)


# --- Apple MPS: the start-up self-check ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_mps_verdict():
    """The default self-check runs once per process; each test here starts without its verdict."""
    from charnn.runtime import _checked_mps

    _checked_mps.cache_clear()
    yield
    _checked_mps.cache_clear()


def perturbed(device: torch.device) -> dict:
    """A device whose LSTM is slightly wrong, as in pytorch#92615."""
    out = reference_outputs(device)
    return {**out, "lstm logits": out["lstm logits"] + 0.01}


def missing_op(device: torch.device) -> dict:
    raise NotImplementedError("The operator 'aten::_lstm_mps' is not currently implemented for the MPS device.")


def test_the_self_check_passes_a_faithful_device_and_names_what_a_faulty_one_gets_wrong():
    cpu = torch.device("cpu")
    assert self_check(cpu) is None
    assert self_check(cpu, run=perturbed) == "lstm logits differ from the CPU's by 0.01"
    assert self_check(cpu, run=missing_op).startswith("NotImplementedError: The operator 'aten::_lstm_mps'")
    nan = {k: v * math.nan for k, v in reference_outputs(cpu).items()}
    assert self_check(cpu, run=lambda device: nan) is not None


class MasklessBackward(torch.nn.Module):
    """Two LSTM layers with dropout between them whose backward ignores the mask, as MPS's fused LSTM did up to
    PyTorch 2.13 (pytorch#190056): the forward drops, the gradient flows as if it had not."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.LSTM(4, 8), torch.nn.LSTM(8, 8)

    def forward(self, x: torch.Tensor):
        h, _ = self.first(x)
        dropped = h * (torch.rand_like(h) > 0.5).float() * 2
        return self.second(h + (dropped - h).detach())


def test_the_self_check_catches_a_backward_that_ignores_dropout_between_layers():
    cpu = torch.device("cpu")
    assert dropout_gradient_gap(cpu) < GRADIENT_TOLERANCE / 10  # the CPU's fused LSTM applies its mask
    assert dropout_gradient_gap(cpu, make=MasklessBackward) > 10 * GRADIENT_TOLERANCE
    reason = self_check(cpu, gradient_gap=lambda device: dropout_gradient_gap(device, make=MasklessBackward))
    assert reason.startswith("lstm gradients with dropout between layers differ from finite differences by")
    assert self_check(cpu, gradient_gap=lambda device: math.nan) is not None


def test_mps_falls_back_to_the_cpu_with_one_warning_when_its_check_fails(monkeypatch):
    monkeypatch.setattr("charnn.runtime.mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("mps", check=lambda device: None) == torch.device("mps")
    for name in ("mps", "auto"):
        with pytest.warns(CharnnWarning, match=r"MPS\) failed charnn's start-up self-check \(lstm logits differ"):
            assert pick_device(
                name, check=lambda device: self_check(torch.device("cpu"), run=perturbed)
            ) == torch.device("cpu")
    # the default check on a machine whose MPS is not really there: its first op fails, and the CPU is used
    with pytest.warns(CharnnWarning, match="self-check"):
        assert pick_device("mps") == torch.device("cpu")


def test_mps_asked_for_where_there_is_none_is_a_user_error(monkeypatch):
    monkeypatch.setattr("charnn.runtime.mps_available", lambda: False)
    with pytest.raises(ConfigError, match="no usable Apple GPU"):
        pick_device("mps")


@pytest.mark.parametrize("command", [["sample", "--length", "20", "--seed", "1"], ["eval"]])
def test_sample_and_eval_take_the_cpu_when_mps_fails_its_check(tiny_run, monkeypatch, command):
    monkeypatch.setattr("charnn.runtime.mps_available", lambda: True)
    monkeypatch.setattr("charnn.runtime.mps_verdict", lambda device: "lstm logits differ from the CPU's by 0.5")
    on_cpu = invoke(command[0], tiny_run, *command[1:], "--device", "cpu")
    res = invoke(command[0], tiny_run, *command[1:], "--device", "mps")
    assert res.stdout == on_cpu.stdout and on_cpu.exit_code == 0
    assert one_line(res, 0, "warning: ") == (
        "warning: the Apple GPU (MPS) failed charnn's start-up self-check (lstm "
        "logits differ from the CPU's by 0.5); using the CPU"
    )


def test_training_warns_once_and_trains_on_the_cpu_when_mps_fails_its_check(tiny_corpus, tmp_path, monkeypatch):
    import json

    monkeypatch.setattr("charnn.runtime.mps_available", lambda: True)
    monkeypatch.setattr("charnn.runtime.mps_verdict", lambda device: "NotImplementedError: aten::_lstm_mps")
    args = [a if a != "cpu" else "mps" for a in TINY]
    res = invoke("train", tiny_corpus, "--out", tmp_path / "run", *args)
    assert res.exit_code == 0, res.output
    assert [line for line in res.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: the Apple GPU (MPS) failed charnn's start-up self-check (NotImplementedError: aten::_lstm_mps); "
        "using the CPU"
    ]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["device"] == "mps"  # as asked


def test_sums_run_in_float32_where_the_device_has_no_float64(tiny_run, monkeypatch):
    """MPS has no float64 (PyTorch refuses it there): a log window's losses, a text's nats, beam scores and the
    report's per-character losses sum in float32 on it. On CPU tensors, with `wide_float` answering as for MPS,
    a training step, scoring, beam search and the surprise table run in float32, and scoring agrees with the
    float64 sum to 1e-5."""
    import charnn.evaluate as evaluate_mod
    import charnn.inspect as inspect_mod
    import charnn.sampling.beam as beam_mod
    import charnn.training.step as step_mod
    from charnn.evaluate import evaluate_validation
    from charnn.inspect import surprise, trace

    cpu = torch.device("cpu")
    assert wide_float(torch.device("mps")) == torch.float32 and wide_float(cpu) == torch.float64
    loaded = load_run(tiny_run)
    exact = evaluate_validation(loaded)
    wide = beam_mod.beam_search(loaded.model, loaded.vocab, "Sp", 3, 8)
    asked = set()
    for module in (evaluate_mod, inspect_mod, beam_mod, step_mod):
        monkeypatch.setattr(module, "wide_float", lambda device, name=module.__name__: asked.add(name) or torch.float32)
    assert evaluate_validation(loaded).loss == pytest.approx(exact.loss, rel=1e-5)
    narrow = beam_mod.beam_search(loaded.model, loaded.vocab, "Sp", 3, 8)
    assert [b.text for b in narrow] == [b.text for b in wide]
    assert [b.logprob for b in narrow] == pytest.approx([b.logprob for b in wide], rel=1e-5)
    ids = loaded.vocab.encode("Speak, speak.")
    assert len(surprise(trace(loaded.model, ids)).loss) == len(ids) - 1
    stats = StepStats.on(cpu)
    assert stats.loss.dtype == torch.float32
    model = loaded.model.train()
    cfg = TrainConfig(device="cpu")
    batch = (torch.randint(len(loaded.vocab), (2, 6)), torch.randint(len(loaded.vocab), (2, 6)))
    taken, _ = optimisation_step(
        model, make_optimizer(model, cfg, cpu), batch, None, stats, cfg=cfg, device=cpu, step=0
    )
    assert taken and stats.loss.dtype == torch.float32 and math.isfinite(float(stats.loss)) and float(stats.loss) > 0
    assert asked == {"charnn.evaluate", "charnn.inspect", "charnn.sampling.beam", "charnn.training.step"}
