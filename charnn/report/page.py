"""The report page: `page.html` filled with the sections, the style (`page.css`), the script (`page.js`) and the
script's JSON data, all inline, so the one file works offline. Writes the file atomically; never prints.
`ReportRefresher` rewrites it during training.
"""

from __future__ import annotations

import functools
import html
import json
import os
import warnings
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from charnn.errors import CharnnError, CharnnWarning, DataError
from charnn.report.analysis import (
    MAX_CHARS,
    Analysis,
    Passage,
    analyse,
    passage_data,
    passage_ids,
    read_run_log,
)
from charnn.report.curves import clip_percent, curve_charts
from charnn.report.lookback import memory_section
from charnn.report.markup import kv_table, note
from charnn.report.passage import gate_section, neuron_section, surprise_section
from charnn.report.record import config_tables, final_metrics, model_summary, timeline
from charnn.store.checkpoint import LoadedModel
from charnn.store.files import atomic_file, output_target, write_error
from charnn.store.rundir import load_run


@functools.cache
def asset(name: str) -> str:
    """A file shipped in this package (page.html, page.css, page.js)."""
    return resources.files("charnn.report").joinpath(name).read_text(encoding="utf-8")


def page_json(data: Any) -> str:
    """JSON for a <script type="application/json"> block: no `<`, `>` or `&` survive, so no `</script>`."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _passage_sections(
    loaded: LoadedModel, passage: Passage | None, analysis: Analysis | None, missing: str
) -> tuple[dict[str, str], dict[str, list]]:
    """The surprise, neuron, gate and memory sections, and the hover points of their charts; without a
    passage, each section says why."""
    if analysis is None:
        why = note(html.escape(missing))
        return {"surprise": why, "neurons": why, "gates": why, "memory": why}, {}
    memory, hover = memory_section(analysis.memory) if analysis.memory else ("", [])
    return {
        "surprise": surprise_section(passage, loaded.eval_segment),
        "neurons": neuron_section(passage, analysis),
        "gates": gate_section(analysis.gates),
        "memory": memory,
    }, {"memory": hover}


def build_report(
    run_dir: str | os.PathLike,
    *,
    text: str | os.PathLike | None = None,
    max_chars: int = MAX_CHARS,
    which: str = "best",
) -> str:
    """The report page for a run directory, as HTML text.

    The passage is `text` (a file) or the run's validation split, cut to `max_chars`. Without either (the
    corpus moved or changed) the passage sections say so and the rest of the page is still built.
    """
    loaded = load_run(run_dir, which=which, device="cpu")
    run_dir = loaded.path.parent  # RUN may also name one checkpoint file of the run
    log = read_run_log(run_dir)
    segment = loaded.eval_segment

    passage, analysis, missing = None, None, ""
    try:
        passage = passage_ids(loaded, text, max_chars=max_chars)
    except DataError as err:
        if text is not None:
            raise
        missing = f"{err}. Pass --text FILE to analyse another passage."
        warnings.warn(f"report without passage sections: {err}", CharnnWarning, stacklevel=2)
    if passage is not None:
        analysis = analyse(loaded, passage, segment=segment)

    curves, hover = curve_charts(log)
    data: dict[str, Any] = {"charts": hover}
    sections, passage_hover = _passage_sections(loaded, passage, analysis, missing)
    data["charts"].update(passage_hover)
    if analysis is not None:
        data.update(passage_data(loaded, passage, analysis))
    return Template(asset("page.html")).substitute(
        title=html.escape(f"charnn report · {run_dir.name}"),
        summary=html.escape(model_summary(loaded.model_cfg)),
        final=kv_table(final_metrics(log, loaded, analysis, passage)),
        clip_percent=f"{clip_percent(log.train):.1f}",
        curves=curves,
        timeline=timeline(log.samples),
        **sections,
        config=config_tables(log.config),
        data=page_json(data),
        css=asset("page.css"),
        js=asset("page.js"),
    )


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, **kw) -> Path:
    """Build the report and write it atomically (default `RUN/report.html`); returns the path written."""
    run = Path(run_dir)
    own = run.parent if run.is_file() else run
    path = Path(out) if out is not None else own / "report.html"
    if path.is_dir():
        path = path / "report.html"
    # RUN/report.html is the run's own file; any other path inside a run is refused (charnn.store.files)
    mine = own if os.path.realpath(path) == os.path.realpath(own / "report.html") else None
    output_target(path, owner=mine)  # refused before the work (a device, a run's file), and again at the write
    page = build_report(run_dir, **kw)
    try:
        with atomic_file(path, owner=mine) as f:
            f.write(page.encode("utf-8"))
    except OSError as err:
        raise write_error(err, path, "report", failed=f"cannot write the report {path}") from None
    return path


class ReportRefresher:
    """A `train(on_progress=...)` callback that rewrites RUN/report.html after each checkpoint and at the end.

    It wraps another callback (the display). A report that cannot be built is a warning, never a failed run.
    """

    def __init__(self, inner=None, *, max_chars: int = MAX_CHARS) -> None:
        self.inner = inner
        self.max_chars = max_chars
        self.path: Path | None = None
        self._run_dir: Path | None = None

    def __call__(self, progress) -> None:
        if self.inner is not None:
            self.inner(progress)
        if progress.kind == "checkpoint" and progress.text:
            self._run_dir = Path(progress.text).parent
            self.refresh()
        elif progress.kind == "end" and self._run_dir is not None:
            self.refresh()

    def refresh(self) -> None:
        try:
            self.path = write_report(self._run_dir, which="latest", max_chars=self.max_chars)
        except CharnnError as err:
            warnings.warn(f"report not refreshed: {err}", CharnnWarning, stacklevel=2)
