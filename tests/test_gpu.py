"""Device tests. `device`-marked tests run on CHARNN_TEST_DEVICE: the CPU here, CUDA on the GPU machine
(benchmarks/gpu_check.py sets it): checkpoint round trips through the CPU, eval reproducing training's validation
loss, the sampling paths agreeing, bitwise resume under --deterministic. `gpu`-marked tests need CUDA and skip
without it (`python3 -m pytest -m gpu`).
"""

import dataclasses
import math
import warnings

import pytest
import torch

from charnn.config import ModelConfig, SampleConfig
from charnn.evaluate import evaluate_validation
from charnn.model import CharRNN
from charnn.runtime import autocast, autocast_dtype, ieee_rnn, set_deterministic
from charnn.sampling.cudagraph import GraphStep
from charnn.sampling.generate import sample_text
from charnn.sampling.stepper import Tuning
from charnn.store.rundir import load_run
from charnn.training.step import make_scaler
from charnn.training.train import train
from tests.conftest import tiny_configs


@pytest.fixture
def deterministic_undone():
    yield
    set_deterministic(False)  # the setting is process-wide: leave the next test as it found it


@pytest.mark.device
def test_a_run_trained_on_the_device_loads_on_the_cpu_and_back(tmp_path, tiny_corpus, device):
    model_cfg, cfg, data = tiny_configs(device=device, max_iters=20)
    result = train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "run")
    assert result.final_val_loss is not None and math.isfinite(result.final_val_loss)
    on_cpu = load_run(result.run_dir, device="cpu")
    here = load_run(result.run_dir, device=device)
    x = torch.randint(len(on_cpu.vocab), (2, 7))
    with ieee_rnn(torch.device(device)):  # cuDNN's default TF32 would be 1e-3 off
        assert torch.allclose(on_cpu.model(x)[0], here.model(x.to(device))[0].cpu(), atol=1e-4)
    # the logged validation loss (bf16 autocast on CUDA) is reproduced by `charnn eval` on the device
    assert math.isclose(evaluate_validation(here).loss, result.final_val_loss, rel_tol=1e-4)


@pytest.mark.device
def test_weight_drop_and_the_average_train_on_the_device(tmp_path, tiny_corpus, device):
    """The masked recurrent matrices go through the device's fused kernel (cuDNN re-flattens its weights for
    them on CUDA), and the checkpoint holds the average that the logged validation scored."""
    model_cfg, cfg, data = tiny_configs(device=device, max_iters=12, eval_every=6, sample_length=0, average=0.9)
    model_cfg = dataclasses.replace(model_cfg, weight_drop=0.3)
    result = train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "run")
    assert result.final_val_loss is not None and math.isfinite(result.final_val_loss)
    here = load_run(result.run_dir, which="latest", device=device)
    assert math.isclose(evaluate_validation(here).loss, result.final_val_loss, rel_tol=1e-4)


@pytest.mark.device
def test_a_cpu_run_resumes_on_the_device_and_back_on_the_cpu(tmp_path, tiny_corpus, device):
    """CPU -> device -> CPU through checkpoints: the optimizer state crosses (fused AdamW and its found_inf
    guard on CUDA, foreach on the CPU) and training goes on finite each time."""
    model_cfg, cfg, data = tiny_configs(max_iters=6, eval_every=6, sample_length=0)
    out = tmp_path / "run"
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=out)
    for where, steps in ((device, 12), ("cpu", 18)):
        step_cfg = dataclasses.replace(cfg, device=where, max_iters=steps)
        result = train(tiny_corpus, model_cfg=model_cfg, train_cfg=step_cfg, data_cfg=data, out_dir=out, resume=True)
        assert result.steps == steps and math.isfinite(result.final_val_loss)


@pytest.mark.device
def test_sampling_paths_agree_on_the_device(tiny_run, device):
    loaded = load_run(tiny_run, device=device)
    for cfg in (
        SampleConfig(length=100, seed=5, prime="First"),
        SampleConfig(length=60, seed=2, num_samples=3, top_k=5, temperature=1.3),
    ):
        fast = sample_text(loaded.model, loaded.vocab, cfg)  # a CUDA graph on CUDA
        eager = sample_text(loaded.model, loaded.vocab, cfg, tuning=Tuning(cuda_graphs=False))
        module = sample_text(loaded.model, loaded.vocab, cfg, path="module")
        assert fast == eager == module
    assert fast[0] != fast[1]  # three streams, three texts


@pytest.mark.device
def test_eval_on_the_device_matches_the_cpu(tiny_run, device):
    on_cpu, here = load_run(tiny_run), load_run(tiny_run, device=device)
    with ieee_rnn(torch.device(device)):
        want = evaluate_validation(on_cpu, precision="fp32")
        got = evaluate_validation(here, precision="fp32")
    assert got.chars == want.chars and math.isclose(got.loss, want.loss, rel_tol=1e-5)


@pytest.mark.device
def test_resume_on_the_device_is_bitwise_exact_under_deterministic(tmp_path, tiny_corpus, device, deterministic_undone):
    model_cfg, cfg, data = tiny_configs(
        device=device, max_iters=12, min_lr=1e-2, eval_every=6, sample_length=0, deterministic=True
    )
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "a")
    assert torch.are_deterministic_algorithms_enabled()
    first = dataclasses.replace(cfg, max_iters=6)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=first, data_cfg=data, out_dir=tmp_path / "b")
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "b", resume=True)
    a = load_run(tmp_path / "a", which="latest").model.state_dict()
    b = load_run(tmp_path / "b", which="latest").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_keeps_the_recurrence_in_fp32_under_bf16():
    """PyTorch's autocast would run cuDNN's RNN in fp16 (with no loss scaling under bf16); charnn's model runs
    it in fp32 and only the head in bf16, so the state stays fp32 and the logits close to the fp32 ones."""
    torch.manual_seed(0)
    for kind in ("lstm", "gru", "rnn"):
        model = CharRNN(ModelConfig(model=kind, layers=2, hidden=64, embed=16), 11).cuda()
        x = torch.randint(11, (4, 30), device="cuda")
        with ieee_rnn(torch.device("cuda")):
            want, _ = model(x)
            with autocast(torch.device("cuda"), "bf16"):
                got, hidden = model(x)
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        assert all(h.dtype == torch.float32 for h in states)
        assert got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max().item() < 0.05
        loss = got.float().logsumexp(-1).mean()
        loss.backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.rnn.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_loss_scaling_trains_on_cuda(tmp_path, tiny_corpus):
    """The path `--precision auto` takes on cards without bf16, forced here: fp16 autocast (the recurrence in
    fp16 too), a GradScaler, the fused AdamW's found_inf guard."""
    model_cfg, cfg, data = tiny_configs(device="cuda", precision="fp16", max_iters=20)
    assert autocast_dtype(torch.device("cuda"), "fp16", training=True) == torch.float16
    assert make_scaler(cfg, torch.device("cuda")) is not None
    result = train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "run")
    assert math.isfinite(result.final_val_loss) and result.final_val_loss < math.log(len(set(tiny_corpus.read_text())))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_failed_graph_capture_on_cuda_falls_back_to_the_same_text(tiny_run, monkeypatch):
    loaded = load_run(tiny_run, device="cuda")
    cfg = SampleConfig(length=120, seed=3, num_samples=2)
    want = sample_text(loaded.model, loaded.vocab, cfg)

    def refuse(self, stepper):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphStep, "_capture", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sample_text(loaded.model, loaded.vocab, cfg) == want
    assert [str(w.message) for w in caught if "CUDA graph" in str(w.message)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_card_reports_its_precision():
    device = torch.device("cuda")
    bf16 = torch.cuda.get_device_capability(device)[0] >= 8
    assert autocast_dtype(device, "auto", training=True) == (torch.bfloat16 if bf16 else torch.float16)
