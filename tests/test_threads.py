"""The CPU thread rule (`choose_threads`), the load it reads (/proc/stat, the load average), the governor that
applies it while training, and `--threads` overriding it."""

from __future__ import annotations

import pytest
import torch

from charnn.training.threads import (
    CpuFacts,
    CpuSnapshot,
    ThreadGovernor,
    busy_elsewhere,
    busy_seconds,
    choose_threads,
)
from tests.conftest import TINY_FLAGS, tiny_configs

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("cores", "most", "elsewhere", "threads"),
    [
        (2, 2, None, 2),  # the load is not readable: torch's choice
        (2, 2, 0.0, 2),  # a quiet machine keeps torch's choice
        (2, 2, 0.2, 2),  # a little background work does not cost a thread
        (2, 2, 0.67, 1),  # a busy loop beside two spinning threads gets two thirds of a core: one thread is left
        (2, 2, 1.0, 1),
        (2, 2, 3.5, 1),  # never fewer than one
        (16, 8, 1.0, 8),  # torch's choice is the most, however many cores are free
        (16, 16, 2.9, 13),
        (16, 16, 3.0, 13),
    ],
)
def test_the_rule_leaves_the_cores_other_programs_use(cores, most, elsewhere, threads):
    assert choose_threads(CpuFacts(cores=cores, most=most, elsewhere=elsewhere)) == threads


def test_threads_asked_for_win_over_the_rule():
    busy = CpuFacts(cores=2, most=2, elsewhere=1.0)
    assert choose_threads(busy, asked=2) == 2
    assert choose_threads(CpuFacts(cores=2, most=2, elsewhere=0.0), asked=1) == 1


STAT = """cpu  900 10 90 5000 7 0 3 20 400 0
cpu0 400 5 40 2000 3 0 1 10 200 0
cpu1 500 5 50 3000 4 0 2 10 200 0
intr 12345
ctxt 999
"""


def test_busy_seconds_sums_the_cpus_this_process_may_use():
    # user + nice + system + irq + softirq + steal; idle, iowait and guest (already inside user) left out
    assert busy_seconds(STAT) == pytest.approx((400 + 5 + 40 + 0 + 1 + 10 + 500 + 5 + 50 + 0 + 2 + 10) / 100)
    assert busy_seconds(STAT, frozenset({1})) == pytest.approx((500 + 5 + 50 + 2 + 10) / 100)
    assert busy_seconds(STAT, frozenset({1}), ticks_per_s=1000) == pytest.approx(0.567)
    assert busy_seconds("cpu  1 2 3 4\nintr 5\n") is None  # no per-CPU lines: unknown
    assert busy_seconds("cpu0 1 2 3 4\n") == pytest.approx(0.06)  # an old kernel's four columns


def test_busy_elsewhere_takes_this_process_out():
    before = CpuSnapshot(wall=10.0, own=1.0, busy=100.0, load=None)
    after = CpuSnapshot(wall=12.0, own=3.0, busy=104.0, load=None)  # 2 cores busy over 2 s, 1 of them ours
    assert busy_elsewhere(before, after) == pytest.approx(1.0)
    alone = CpuSnapshot(wall=12.0, own=5.0, busy=104.0, load=None)  # tick rounding: never below zero
    assert busy_elsewhere(before, alone) == 0.0
    no_stat = CpuSnapshot(wall=12.0, own=3.0, busy=None, load=2.5)  # macOS: the load average, less ours
    assert busy_elsewhere(CpuSnapshot(10.0, 1.0, None, 2.0), no_stat) == pytest.approx(1.5)
    assert busy_elsewhere(before, CpuSnapshot(12.0, 3.0, None, None)) is None
    assert busy_elsewhere(before, before) is None  # no time passed


class FakeMachine:
    """Snapshots of a 2-core machine where the other programs keep `elsewhere` cores busy, on a fake clock."""

    def __init__(self) -> None:
        self.now, self.busy, self.elsewhere, self.slept = 0.0, 0.0, 0.0, 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.busy += seconds * self.elsewhere

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.advance(seconds)

    def look(self) -> CpuSnapshot:
        return CpuSnapshot(wall=self.now, own=0.0, busy=self.busy, load=None)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def governor(machine: FakeMachine, asked: int | None = None, device=CPU) -> ThreadGovernor:
    return ThreadGovernor(asked, device, every=2.0, look=machine.look, clock=lambda: machine.now, sleep=machine.sleep)


def test_governor_cuts_threads_at_once_and_restores_them_after_two_quiet_looks(two_threads):
    machine = FakeMachine()
    machine.elsewhere = 1.0
    g = governor(machine)
    assert g.tick() is False  # the first look: waits out the shortest window, then decides (reported by describe)
    assert machine.slept == pytest.approx(0.2) and torch.get_num_threads() == 1
    assert g.describe() == "threads: 1 of 2 (other programs keep 1.0 cores busy; looked at again every 2 s)"
    machine.elsewhere = 0.0
    machine.advance(1.0)
    assert g.tick() is False and torch.get_num_threads() == 1  # not time to look yet
    machine.advance(1.5)
    assert g.tick() is False and torch.get_num_threads() == 1  # one quiet look is not enough to add a thread
    machine.advance(2.0)
    assert g.tick() is True and torch.get_num_threads() == 2
    assert g.describe().startswith("threads: 2 (torch's choice; other programs keep 0.0 cores busy")
    machine.elsewhere = 0.9
    machine.advance(2.0)
    assert g.tick() is True and torch.get_num_threads() == 1  # busy again: one look suffices
    torch.set_num_threads(1)
    g.restore()
    assert torch.get_num_threads() == 2


def test_asked_threads_are_set_and_never_changed(two_threads):
    machine = FakeMachine()
    machine.elsewhere = 1.5
    g = governor(machine, asked=2)
    for _ in range(3):
        machine.advance(3.0)
        assert g.tick() is False
    assert torch.get_num_threads() == 2 and g.describe() == "threads: 2 (--threads)"


def test_governor_leaves_other_devices_and_single_threads_alone(two_threads):
    machine = FakeMachine()
    machine.elsewhere = 2.0
    g = governor(machine, device=torch.device("cuda"))
    assert g.tick() is False and torch.get_num_threads() == 2 and g.describe() == ""
    torch.set_num_threads(1)
    g = governor(machine)
    assert g.tick() is False and machine.slept == 0.0 and g.describe() == "threads: 1 (torch's choice)"


def test_training_reports_its_threads_and_restores_the_count(tiny_corpus, tmp_path, two_threads):
    from charnn.training.train import train

    model, cfg, data = tiny_configs(max_iters=4, eval_every=4, sample_length=0, threads=1)
    events = []
    train(
        tiny_corpus,
        model_cfg=model,
        train_cfg=cfg,
        data_cfg=data,
        out_dir=tmp_path / "asked",
        on_progress=events.append,
    )
    assert [e.text for e in events if e.kind == "plan"] == ["threads: 1 (--threads)"]
    assert torch.get_num_threads() == 2  # restored after the run
    events.clear()
    model, cfg, data = tiny_configs(max_iters=4, eval_every=4, sample_length=0)
    train(
        tiny_corpus,
        model_cfg=model,
        train_cfg=cfg,
        data_cfg=data,
        out_dir=tmp_path / "chosen",
        on_progress=events.append,
    )
    lines = [e.text for e in events if e.kind == "plan"]
    assert len(lines) == 1 and lines[0].startswith("threads: ") and "cores busy" in lines[0]
    assert torch.get_num_threads() == 2


def test_cli_threads_flag_overrides_the_rule(tiny_corpus, tmp_path, two_threads):
    from tests.conftest import invoke

    res = invoke(
        "train",
        tiny_corpus,
        "--out",
        tmp_path / "run",
        *TINY_FLAGS,
        "--max-iters",
        "3",
        "--eval-every",
        "3",
        "--sample-length",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
    )
    assert res.exit_code == 0, res.output
    assert "plan: threads: 1 (--threads)" in res.stderr.splitlines()
    assert torch.get_num_threads() == 2
