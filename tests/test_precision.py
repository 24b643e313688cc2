"""--precision on the CPU, whatever CPU runs the tests: each command with fp32, bf16 and auto gives its result
where the CPU has native bf16 (`charnn.runtime.native_bf16_cpu`, asked of oneDNN and PyTorch), and bf16 is
one error line with exit 6 where it has not, before anything is written; auto then stays fp32 silently.
CI runs these (marker `hw`) again with oneDNN capped at AVX2 and with no vector ISA (.ci/run)."""

import json
import os
import re

import pytest
import torch

from charnn.config import SampleConfig
from charnn.errors import DeviceError
from charnn.evaluate import evaluate_ids
from charnn.runtime import autocast_dtype, cpu_bf16_missing, native_bf16_cpu
from charnn.sampling.beam import beam_search
from charnn.sampling.generate import sample_text
from charnn.store.rundir import load_run
from tests.conftest import TINY_FLAGS, corpus_of, invoke, one_error_line, snapshot

pytestmark = pytest.mark.hw

NATIVE = native_bf16_cpu()
CPU = torch.device("cpu")
REFUSED = re.compile(r"error: --precision bf16: this CPU has no native bf16 \(.+\); use --precision fp32")
TINY = TINY_FLAGS
SHORT = ["--max-iters", "4", "--eval-every", "4", "--sample-length", "0", "--quiet", "--device", "cpu"]


def works(result, precision: str) -> bool:
    """Whether the command ran: exit 0, or, for bf16 without native bf16, the one refusal line and exit 6."""
    if precision == "bf16" and not NATIVE:
        assert REFUSED.fullmatch(one_error_line(result, DeviceError.exit_code)), result.stderr
        assert result.stdout == ""
        return False
    assert result.exit_code == 0, result.output
    return True


# --- the detection ---------------------------------------------------------------------------------------


def test_native_bf16_is_what_onednn_and_pytorch_report():
    reported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert not NATIVE or reported  # never bf16 where this process's oneDNN cannot run it
    assert NATIVE == (cpu_bf16_missing() is None)
    assert autocast_dtype(CPU, "auto", training=True) == (torch.bfloat16 if NATIVE else None)
    assert autocast_dtype(CPU, "auto") is None and autocast_dtype(CPU, "fp32") is None


@pytest.mark.parametrize(
    "patch, reason",
    [
        ({"torch.backends.mkldnn.is_available": lambda: False}, "this PyTorch has no oneDNN"),
        ({"torch.ops.mkldnn._is_mkldnn_bf16_supported": lambda: False}, "oneDNN reports none"),
        ({"torch.cpu.get_capabilities": lambda: {"avx512_f": True, "avx512_bf16": False}}, "lacks AVX512-BF16"),
        ({"torch.cpu.get_capabilities": lambda: {"bf16": True, "architecture": "arm64"}}, "lacks AVX512-BF16"),
        ({"torch.ops.mkldnn._is_mkldnn_bf16_supported": lambda: 1 / 0}, "PyTorch cannot tell"),
    ],
)
def test_each_missing_piece_means_no_native_bf16_and_never_raises(monkeypatch, patch, reason):
    monkeypatch.setattr("torch.backends.mkldnn.is_available", lambda: True)
    monkeypatch.setattr("torch.ops.mkldnn._is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr("torch.cpu.get_capabilities", lambda: {"avx512_bf16": True}, raising=False)
    assert cpu_bf16_missing() is None
    for name, value in patch.items():
        monkeypatch.setattr(name, value, raising=False)
    assert reason in cpu_bf16_missing()


def test_the_ci_caps_take_effect():
    """Under .ci/run's caps the tests really see a CPU without native bf16 (else they would test nothing new)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("SSE41", "AVX", "AVX2", "AVX2_VNNI"):
        assert not NATIVE and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
    if capability in ("DEFAULT", "AVX2"):
        assert torch.backends.cpu.get_cpu_capability() == capability


def test_bf16_without_native_support_is_a_device_error():
    if NATIVE:
        assert autocast_dtype(CPU, "bf16") == autocast_dtype(CPU, "bf16", training=True) == torch.bfloat16
    else:
        for training in (False, True):
            with pytest.raises(DeviceError, match=r"--precision bf16: this CPU has no native bf16"):
                autocast_dtype(CPU, "bf16", training=training)


# --- each command ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_train(tmp_path, tiny_corpus, precision):
    run = tmp_path / "run"
    if works(invoke("train", tiny_corpus, "--out", run, *TINY, *SHORT, "--precision", precision), precision):
        assert json.loads((run / "config.json").read_text())["train"]["precision"] == precision
        assert (run / "step-00000004.safetensors").exists()
    else:
        assert not run.exists()  # refused before the run directory is made


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_resume(run_dir, precision):
    """A resume may change the precision (bf16 included where the CPU has it); a refused one leaves the run as
    it was, unlocked, so a resume in fp32 then continues it."""
    before = snapshot(run_dir)
    more = ["--max-iters", "22", "--eval-every", "22", "--quiet", "--device", "cpu"]
    if works(invoke("train", "--resume", run_dir, *more, "--precision", precision), precision):
        assert (run_dir / "step-00000022.safetensors").exists()
    else:
        assert snapshot(run_dir) == before
        assert invoke("train", "--resume", run_dir, *more, "--precision", "fp32").exit_code == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sample(run_dir, precision):
    args = ["--length", "30", "--seed", "1", "--num-samples", "2", "--precision", precision]
    if works(invoke("sample", run_dir, *args), precision):
        assert invoke("sample", run_dir, *args).stdout.count("---------------") == 1
    works(invoke("sample", run_dir, "--beam", "2", "--length", "5", "--precision", precision), precision)


def test_sample_has_no_auto_precision(run_dir):
    """Sampling is fp32 unless asked, so that every path and CPU gives the same text."""
    assert "--precision" in one_error_line(invoke("sample", run_dir, "--precision", "auto"))


@pytest.mark.parametrize("path", ["fast", "module"])
def test_sampling_in_bf16_by_either_path(run_dir, path):
    loaded = load_run(run_dir)
    cfg = SampleConfig(length=20, seed=2, num_samples=2, precision="bf16")
    if NATIVE:
        assert all(len(text) == 20 for text in sample_text(loaded.model, loaded.vocab, cfg, path=path))
        assert len(beam_search(loaded.model, loaded.vocab, None, 2, 5, precision="bf16")) == 2
    else:
        with pytest.raises(DeviceError, match="no native bf16"):
            sample_text(loaded.model, loaded.vocab, cfg, path=path)
        with pytest.raises(DeviceError, match="no native bf16"):
            beam_search(loaded.model, loaded.vocab, None, 2, 5, precision="bf16")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_eval(run_dir, precision):
    """`charnn eval` scores in `auto` (fp32 on the CPU, the exact score); the library takes any precision."""
    loaded = load_run(run_dir)
    ids = loaded.vocab.encode(corpus_of(run_dir).read_text(encoding="utf-8")[:500])
    exact = evaluate_ids(loaded.model, ids, segment=64, precision="fp32").loss
    if precision == "bf16" and not NATIVE:
        with pytest.raises(DeviceError, match="no native bf16"):
            evaluate_ids(loaded.model, ids, segment=64, precision=precision)
    else:
        loss = evaluate_ids(loaded.model, ids, segment=64, precision=precision).loss
        assert loss == exact if precision != "bf16" else abs(loss - exact) < 0.05
    assert invoke("eval", run_dir).exit_code == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_serve_steps_in_fp32_on_every_cpu(run_dir, precision):
    """The server has no --precision: its batched steps are fp32 everywhere (test_serve holds them to
    `charnn sample`'s text)."""
    assert "No such option" in invoke("serve", run_dir, "--precision", precision).output
