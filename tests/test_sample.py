"""Sampling: determinism, greedy, prime, both stepping paths; a vocabulary without space or newline samples
unprimed."""

from pathlib import Path

import pytest
import torch

from charnn.config import DataConfig, ModelConfig, SampleConfig
from charnn.data import Vocab
from charnn.errors import ConfigError, DeviceError, VocabularyError
from charnn.model import CharRNN
from charnn.runtime import native_bf16_cpu
from charnn.sampling.generate import sample_text
from charnn.sampling.packing import onednn_packs, pack
from charnn.sampling.stepper import MEASURED, FastStepper, Tuning
from charnn.store.checkpoint import model_bytes
from tests.conftest import SMALL_MODEL, invoke

VOCAB = Vocab(tuple(map(ord, "\n abcdefgh")))


# fp32 weights are packed where oneDNN's packed linear runs here (x86 builds; arm64 builds differ by version), bf16
# ones only where the CPU also has native bf16; elsewhere the stepper falls back to addmm
PACKING = onednn_packs(torch.float32)
PACKING_BF16 = onednn_packs(torch.bfloat16)
PACK_ALL = Tuning(pack_min_weight=0, pack_min_rows=0)  # the packed kernel even for tiny test models
PACK_NONE = Tuning(pack_min_weight=10**12)


def packing(packed: bool) -> Tuning:
    return PACK_ALL if packed else PACK_NONE


def model_of(kind="lstm", seed=0):
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(model=kind, layers=2, hidden=16, embed=8), len(VOCAB))


def test_same_seed_same_text_and_different_seed_differs():
    model = model_of()
    cfg = SampleConfig(length=200, seed=11, temperature=1.0)
    assert sample_text(model, VOCAB, cfg) == sample_text(model, VOCAB, cfg)
    other = SampleConfig(length=200, seed=12, temperature=1.0)
    assert sample_text(model, VOCAB, cfg) != sample_text(model, VOCAB, other)


@pytest.mark.hw
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("sigmoid_tanh", [False, True])
def test_fast_and_module_paths_give_the_same_text(kind, sigmoid_tanh):
    # both ways the fast stepper computes tanh: the CPU kernel (small batches) and 2 sigmoid(2x) - 1 (large),
    # the first with plain addmm, the second with the matmul weights packed for oneDNN
    tuning = Tuning(
        sigmoid_tanh_work=0 if sigmoid_tanh else 10**9, pack_min_weight=0 if sigmoid_tanh else 10**12, pack_min_rows=0
    )
    model = model_of(kind)
    cfg = SampleConfig(length=300, seed=3, temperature=1.0, prime="abc", num_samples=3)
    assert sample_text(model, VOCAB, cfg, tuning=tuning) == sample_text(model, VOCAB, cfg, path="module")
    stepper = FastStepper(model, batch_size=3, tuning=tuning)
    assert stepper.sig_tanh == sigmoid_tanh
    assert all((w.packed is not None) == (sigmoid_tanh and PACKING) for w in stepper.weights)


def test_greedy_equals_top_k_1():
    model = model_of()
    greedy = sample_text(model, VOCAB, SampleConfig(length=100, greedy=True, seed=1))
    top1 = sample_text(model, VOCAB, SampleConfig(length=100, top_k=1, seed=2))
    assert greedy == top1


def test_output_starts_with_the_prime_and_has_the_length():
    text = sample_text(model_of(), VOCAB, SampleConfig(length=50, prime="bad cab", seed=0))[0]
    assert text.startswith("bad cab") and len(text) == len("bad cab") + 50


def test_unprimed_sample_does_not_echo_the_default_prime():
    text = sample_text(model_of(), VOCAB, SampleConfig(length=40, seed=0))[0]
    assert len(text) == 40


def test_top_p_keeps_only_the_head_of_the_distribution():
    # a model whose head strongly prefers 'a': top_p 0.5 must always pick it
    model = model_of()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[VOCAB.symbols.index(ord("a"))] = 5.0
    text = sample_text(model, VOCAB, SampleConfig(length=100, top_p=0.5, temperature=1.0, seed=0))[0]
    assert set(text) == {"a"}
    mixed = sample_text(model, VOCAB, SampleConfig(length=400, temperature=1.0, seed=0))[0]
    assert set(mixed) != {"a"}


def test_prime_with_unknown_characters_lists_them():
    with pytest.raises(VocabularyError, match="'z'"):
        sample_text(model_of(), VOCAB, SampleConfig(prime="abz", length=5))


def test_unseeded_sampling_leaves_the_global_rng_alone():
    model = model_of()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    sample_text(model, VOCAB, SampleConfig(length=20))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.hw
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("packed", [False, True])
def test_fast_stepper_matches_the_module_step_by_step(kind, batch, packed):
    """The stepper's logits equal nn.LSTM/GRU/RNN's to fp32 rounding in fp32, and stay close in bf16, with
    the matmul weights packed for oneDNN or not (bf16 ones only where the CPU has native bf16)."""
    tuning = packing(packed)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=3, hidden=160, embed=24), len(VOCAB)).eval()
    ids = torch.randint(len(VOCAB), (batch, 40))
    with torch.no_grad():
        want, _ = model(ids)  # (B, T, V)
        for precision, tol in (("fp32", 1e-4), ("bf16", 0.1)):
            stepper = FastStepper(model, temperature=1.0, batch_size=batch, precision=precision, tuning=tuning)
            assert stepper.sig_tanh == (batch * 160 >= MEASURED.sigmoid_tanh_work)
            can_pack = PACKING if precision == "fp32" else PACKING_BF16
            assert all((w.packed is not None) == (packed and can_pack) for w in stepper.weights)
            got = torch.stack([stepper.step(ids[:, t]).clone() for t in range(ids.shape[1])], dim=1)
            err = (got - want).abs().max().item()
            assert err < tol, (precision, err)
            if precision == "bf16":
                assert err > 1e-6  # the bf16 path really rounds


@pytest.mark.hw
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("tuning", [MEASURED, Tuning(sigmoid_tanh_work=0, pack_min_weight=0, pack_min_rows=0)])
def test_fast_stepper_follows_the_readable_cells(kind, tuning):
    """The kernel against `charnn.model`'s reference cells (which `charnn.inspect.trace` steps), one stream."""
    from charnn.inspect import trace

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=2, hidden=24, embed=8, layer_norm=True), len(VOCAB)).eval()
    ids = torch.randint(len(VOCAB), (60,))
    stepper = FastStepper(model, batch_size=1, tuning=tuning)
    with torch.no_grad():
        got = torch.cat([stepper.step(ids[t : t + 1]).clone() for t in range(len(ids))])  # (T, V)
    torch.testing.assert_close(got, trace(model, ids.numpy()).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.hw
def test_bf16_sampling_is_seeded_and_close_to_fp32():
    """Where the CPU has native bf16; elsewhere both paths refuse it (DeviceError, exit 6 on the command line)."""
    model = model_of()
    cfg = SampleConfig(length=300, seed=5, temperature=1.0, num_samples=4, precision="bf16")
    if not native_bf16_cpu():
        for path in ("fast", "module"):
            with pytest.raises(DeviceError, match="this CPU has no native bf16"):
                sample_text(model, VOCAB, cfg, path=path)
        return
    text = sample_text(model, VOCAB, cfg)
    assert text == sample_text(model, VOCAB, cfg)
    assert all(len(t) == 300 for t in text)
    # module path under bf16 autocast runs too (its text may differ from the fast path's: different rounding)
    assert len(sample_text(model, VOCAB, cfg, path="module")) == 4


def test_sampling_precision_is_validated():
    with pytest.raises(ConfigError, match="--precision"):
        SampleConfig(precision="fp16")


@pytest.mark.hw
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("packed", [False, True])
def test_fast_path_follows_layer_norm_and_tied_weights(kind, packed):
    torch.manual_seed(0)
    model = CharRNN(
        ModelConfig(model=kind, layers=2, hidden=16, embed=16, layer_norm=True, tie_weights=True, locked_dropout=0.3),
        len(VOCAB),
    )
    with torch.no_grad():  # a non-trivial norm, so ignoring it would change the text
        model.ln.weight.uniform_(0.5, 2.0)
        model.ln.bias.uniform_(-1.0, 1.0)
    cfg = SampleConfig(length=300, seed=3, temperature=1.0, prime="abc", num_samples=3)
    fast = sample_text(model, VOCAB, cfg, tuning=PACK_ALL if packed else MEASURED)
    assert fast == sample_text(model, VOCAB, cfg, path="module")


@pytest.mark.hw
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("packed", [False, True])
def test_stepper_restore_state_undoes_steps(kind, precision, packed):
    """What the CUDA graph path relies on after its warm-up and capture steps: restoring a saved state
    makes the next steps exactly those of a stepper that never took them (bf16's state copy included)."""
    tuning = PACK_ALL if packed else MEASURED
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=2, hidden=32, embed=8), len(VOCAB)).eval()
    ids = torch.randint(len(VOCAB), (6, 20))
    with torch.no_grad():
        _, hidden = model(ids[:, :10])
        fresh = FastStepper(model, batch_size=6, precision=precision, tuning=tuning)
        fresh.load(hidden)
        used = FastStepper(model, batch_size=6, precision=precision, tuning=tuning)
        used.load(hidden)
        saved = used.save_state()
        for t in range(3):
            used.step(ids[:, t])
        used.restore_state(saved)
        for t in range(10, 20):
            assert torch.equal(used.step(ids[:, t]), fresh.step(ids[:, t]))


@pytest.mark.hw
def test_weights_are_packed_by_the_measured_rule():
    """fp32: from PACK_MIN_ROWS streams and PACK_MIN_WEIGHT entries; bf16: from one stream, on CPUs with native
    bf16; never what the packed kernel cannot take (float64 here), which falls back to addmm."""
    big = torch.randn(MEASURED.pack_min_weight // 1024, 1024)
    small = torch.randn(MEASURED.pack_min_weight // 1024 - 1, 1024)
    rows = max(MEASURED.pack_min_rows, 2)
    assert (pack(big, rows).packed is not None) == PACKING
    assert pack(big, MEASURED.pack_min_rows - 1).packed is None or MEASURED.pack_min_rows <= 1
    assert (pack(big.bfloat16(), 1).packed is not None) == PACKING_BF16
    assert pack(small, rows).packed is None
    assert pack(big.double(), rows).packed is None
    assert torch.equal(pack(big, rows).t, big)
    assert (pack(small, 1, PACK_ALL).packed is not None) == PACKING  # the thresholds are arguments
    assert not PACKING_BF16 or native_bf16_cpu()  # bf16 never packed where it would be emulated


def test_a_stepper_refuses_a_batch_of_another_size():
    """The packed kernel does not check the rows it adds; the stepper does, whichever kernel it uses."""
    for packed in (False, True):
        stepper = FastStepper(model_of(), batch_size=4, tuning=packing(packed))
        with pytest.raises(ValueError, match=r"\(4,\)"):
            stepper.step(torch.arange(5))


def test_packing_follows_the_onednn_switch(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert not onednn_packs(torch.float32) and not onednn_packs(torch.bfloat16)
    assert pack(torch.randn(64, 64), 8, PACK_ALL).packed is None


def test_vocabulary_without_space_or_newline_samples_unprimed(tmp_path: Path):
    vocab = Vocab(tuple(map(ord, "abc")))
    model = CharRNN(SMALL_MODEL, len(vocab))
    text = sample_text(model, vocab, SampleConfig(length=30, seed=1))[0]
    assert len(text) == 30 and set(text) <= set("abc")
    path = tmp_path / "step-00000001.safetensors"
    path.write_bytes(model_bytes(model, vocab, DataConfig(), step=1, val_loss=None, corpus_sha256=""))
    res = invoke("sample", str(path), "--length", "30", "--seed", "1")
    assert res.exit_code == 0 and res.stdout == text + "\n"


# --- one stream on the CPU: the draw on the host, the split upper-layer matmuls, long primes ---------------

SPLIT_ALL = Tuning(split_min_weight=0)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("options", [{}, {"top_k": 3}, {"top_p": 0.6}, {"greedy": True}])
def test_one_stream_gives_the_module_paths_text(kind, options):
    """One stream takes the host-side draw (`choose_one`), the module path the tensor draw (`choose`): the same
    uniforms through the same inverse CDF give the same text, with the split matmuls or without."""
    model = model_of(kind)
    cfg = SampleConfig(length=400, seed=7, temperature=1.0, prime="ab", **options)
    want = sample_text(model, VOCAB, cfg, path="module")
    assert sample_text(model, VOCAB, cfg) == want
    assert sample_text(model, VOCAB, cfg, tuning=SPLIT_ALL) == want
    assert sample_text(model, VOCAB, cfg) == sample_text(model, VOCAB, cfg)  # the same seed, the same text


def test_the_host_draw_follows_the_distribution():
    """The host-side inverse CDF draws each symbol at its probability (a chi-square bound over 20,000 draws)."""
    from charnn.sampling.generate import _one_stream

    probs = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])

    class Constant:  # a stepper whose logits never change
        def step(self, i):
            return probs.log()[None]

    gen = torch.Generator().manual_seed(0)
    n = 20000
    ids = [int(t) for t in _one_stream(Constant(), SampleConfig(length=n, temperature=1.0), probs.log()[None], gen)]
    counts = torch.bincount(torch.tensor(ids), minlength=5).double()
    chi2 = float(((counts - n * probs) ** 2 / (n * probs)).sum())
    assert chi2 < 18.5  # p = 0.001 at 4 degrees of freedom


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_split_matmuls_and_int_ids_step_as_the_fused_kernel(kind):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=3, hidden=24, embed=8, layer_norm=True), len(VOCAB)).eval()
    ids = torch.randint(len(VOCAB), (50,))
    fused, split = FastStepper(model), FastStepper(model, tuning=SPLIT_ALL)
    assert split.split and not fused.split
    with torch.no_grad():
        for t in range(len(ids)):  # both orders of the split layers (they alternate), against the fused kernel
            want = fused.step(ids[t : t + 1]).clone()
            torch.testing.assert_close(split.step(int(ids[t])), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one stream"):
        FastStepper(model, batch_size=2).step(1)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_long_prime_warms_as_character_steps_do(kind):
    """The chunked forward pass over a prime leaves the state that stepping it one character at a time does."""
    from charnn.sampling.generate import warm

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=2, hidden=16, embed=8), len(VOCAB)).eval()
    ids = torch.randint(len(VOCAB), (300,)).tolist()
    logits, hidden = warm(model, ids, chunk=64)
    whole_logits, whole = warm(model, ids)
    with torch.no_grad():
        state = None
        for i in ids:
            step_logits, state = model(torch.tensor([[i]]), state)
    for got in (hidden, whole):
        for a, b in zip(got if kind == "lstm" else [got], state if kind == "lstm" else [state], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, step_logits[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole_logits, step_logits[:, -1], atol=1e-5, rtol=1e-5)


def test_prime_file_samples_as_the_same_prime_given_inline(tmp_path: Path, tiny_run: Path):
    """--prime-file FILE writes what --prime "$(cat FILE)" writes (CRLF read as the corpus was: LF); its
    errors say nothing of training's --encoding or --bytes."""
    from charnn.errors import DataError
    from charnn.sampling.generate import read_prime

    prime = tmp_path / "prime.txt"
    prime.write_bytes(b"First Citizen:\r\nBefore we proceed")
    inline = invoke("sample", tiny_run, "--prime", "First Citizen:\nBefore we proceed", "--length", "40", "--seed", "2")
    from_file = invoke("sample", tiny_run, "--prime-file", prime, "--length", "40", "--seed", "2")
    assert inline.exit_code == from_file.exit_code == 0
    assert from_file.stdout == inline.stdout and from_file.stdout.startswith("First Citizen:\nBefore")
    prime.write_bytes(b"ab\xffcd")
    with pytest.raises(DataError, match="byte 2") as err:
        read_prime(prime, VOCAB)
    assert "--encoding" not in str(err.value)


@pytest.mark.hw
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("tuning", [MEASURED, PACK_ALL, Tuning(split_min_weight=0, sigmoid_tanh_work=0)])
def test_an_int_id_steps_as_a_one_element_tensor(kind, precision, tuning):
    """Every kernel variant takes one stream's id as an int (the list of calls, the table row as a bias, or
    the general path where the packed kernel or bf16 cannot take that bias)."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=2, hidden=16, embed=8), len(VOCAB)).eval()
    by_int = FastStepper(model, precision=precision, tuning=tuning)
    by_tensor = FastStepper(model, precision=precision, tuning=tuning)
    with torch.no_grad():
        for i in (1, 4, 2, 7, 3, 3, 9):
            torch.testing.assert_close(by_int.step(i), by_tensor.step(torch.tensor([i])), atol=1e-5, rtol=1e-5)
