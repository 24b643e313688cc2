"""The playground page: one self-contained HTML file (no network, no external scripts) holding a model's weights,
its description and a JavaScript forward step and sampler (`model.js`), with the page's UI (`playground.js`,
`playground.css`, `playground.html`; package data). Nothing from the model is inserted as HTML.
"""

from __future__ import annotations

import functools
import html
import os
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from charnn.export.output import check_target, write_output
from charnn.export.spec import describe, model_weights
from charnn.report import page_json
from charnn.store.checkpoint import LoadedModel


@functools.cache
def asset(name: str) -> str:
    """A file shipped in this package (playground.html, playground.css, model.js, playground.js)."""
    return resources.files("charnn.export").joinpath(name).read_text(encoding="utf-8")


def build_page(loaded: LoadedModel, *, precision: str = "fp32", server: dict[str, Any] | None = None) -> str:
    """The playground page for a loaded model, as HTML text.

    With `server` (the serving limits, e.g. `{"max_length": 10000}`) it is the page `charnn serve` answers
    `GET /` with: no weights; the server it came from runs the model (generation streamed from /v1/generate,
    predictions from /v1/next, surprise from /v1/score), and its policy allows requests to that origin only.
    """
    weights = model_weights(loaded, precision) if server is None else None
    spec = describe(loaded, weights) | ({"server": server} if server is not None else {})
    return Template(asset("playground.html")).substitute(
        title=html.escape(f"charnn playground · {spec['name']}"),
        connect="" if server is None else "connect-src 'self'; ",
        css=asset("playground.css"),
        spec=page_json(spec),
        weights=weights.base64() if weights else "",  # base64 holds no `<`, `&` or quote
        model_js=asset("model.js"),
        page_js=asset("playground.js"),
    )


def export_html(loaded: LoadedModel, path: str | os.PathLike, *, precision: str = "fp32", force: bool = False) -> Path:
    """Write the playground page for `loaded` to `path`; an existing file is replaced only with `force`."""
    check_target(path, force=force)
    return write_output(path, build_page(loaded, precision=precision).encode("utf-8"), force=force)
