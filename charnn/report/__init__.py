"""The training report: one self-contained HTML page (inline SVG, CSS and JS; nothing fetched) built from a run
directory: loss, learning-rate and gradient curves, the sample timeline, a surprise heatmap, a neuron explorer,
gate saturation, and the run's configuration. `analysis` reads the run and the model, `svg` draws charts, the
sections are written by kind (`curves`, `record`, `passage`, `lookback`, sharing `markup`), `page` assembles and
writes the page. The numbers come from `charnn.inspect`.
"""

from charnn.report.analysis import (
    MAX_CHARS,
    Analysis,
    Passage,
    RunLog,
    analyse,
    display_symbols,
    passage_ids,
    read_config,
    read_jsonl,
    read_metrics,
    read_run_log,
)
from charnn.report.page import ReportRefresher, build_report, page_json, write_report

__all__ = [
    "MAX_CHARS",
    "Analysis",
    "Passage",
    "ReportRefresher",
    "RunLog",
    "analyse",
    "build_report",
    "display_symbols",
    "page_json",
    "passage_ids",
    "read_config",
    "read_jsonl",
    "read_metrics",
    "read_run_log",
    "write_report",
]
