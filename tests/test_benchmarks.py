"""Smoke test of benchmarks/: each script runs with --quick and prints its fields; no timing asserted."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import PYTHON, REPO, cli_env

FIELDS = {
    "train_speed.py": {"charnn_chars_per_s", "bare_chars_per_s", "ratio_loop", "ratio_amortised",
                       "peak_rss_mb_charnn", "peak_rss_mb_plain", "rss_ratio"},
    "sample_speed.py": {"one_stream_chars_per_s", "one_stream_plain_chars_per_s", "one_stream_ratio",
                        "many_streams_chars_per_s", "many_streams_plain_chars_per_s", "many_streams_ratio",
                        "fast_and_module_same_text"},
    "eval_speed.py": {"charnn_chars_per_s", "bare_chars_per_s", "ratio", "cli_eval_seconds"},
}


@pytest.mark.parametrize("script", sorted(FIELDS))
def test_benchmark_runs_quick_and_prints_its_fields(script):
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / script), "--quick"], env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert FIELDS[script] <= set(result)
    assert "ratio" in done.stdout and "machine:" in done.stdout


@pytest.mark.parametrize("script", sorted(FIELDS))
def test_benchmark_help(script):
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / script), "--help"], env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--quick" in done.stdout
