"""The playground page: one self-contained HTML file (no network, no external scripts) holding a model's weights,
its description and a JavaScript forward step and sampler (`model.js`), with the page's UI (`playground.js`,
`playground.css`, `playground.html`; package data), and on request the training text's novelty index with its
search (`novelty.js`). Nothing from the model or the corpus is inserted as HTML.
"""

from __future__ import annotations

import base64
import functools
import html
import os
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from charnn.errors import NoveltyUnavailable
from charnn.export.output import check_target, write_output
from charnn.export.spec import describe, model_weights
from charnn.novelty import DEFAULT_COPY_SPAN
from charnn.novelty.index import NoveltyIndex
from charnn.novelty.run import run_index
from charnn.report import page_json
from charnn.store.checkpoint import LoadedModel

MAX_PAGE_NOVELTY_BYTES = 6_000_000  # the index and the text a page may carry (8 MB in base64): about 1.2M characters


@functools.cache
def asset(name: str) -> str:
    """A file shipped in this package (playground.html, playground.css, model.js, playground.js)."""
    return resources.files("charnn.export").joinpath(name).read_text(encoding="utf-8")


def build_page(
    loaded: LoadedModel,
    *,
    precision: str = "fp32",
    server: dict[str, Any] | None = None,
    novelty: NoveltyIndex | None = None,
) -> str:
    """The playground page for a loaded model, as HTML text.

    With `server` (the serving limits, e.g. `{"max_length": 10000}`) it is the page `charnn serve` answers
    `GET /` with: no weights; the server it came from runs the model (generation streamed from /v1/generate,
    predictions from /v1/next, surprise from /v1/score), and its policy allows requests to that origin only.
    With `novelty` (the training text's index, `page_novelty`) the page marks what each sample copies from it.
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
        novelty="" if novelty is None else _novelty_scripts(novelty),
    )


def _novelty_scripts(index: NoveltyIndex) -> str:
    """The index as the page carries it: its description (JSON), the suffix array then the ids (base64, little
    endian), and the script that searches them (`novelty.js`)."""
    ids = np.ascontiguousarray(index.ids)
    spec = {
        "count": len(ids),
        "id_bytes": ids.dtype.itemsize,
        "symbols": list(index.vocab.symbols),
        "copy_span": DEFAULT_COPY_SPAN,
    }
    data = np.asarray(index.sa, dtype="<i4").tobytes() + ids.astype(ids.dtype.newbyteorder("<")).tobytes()
    return (
        f'\n<script type="application/json" id="charnn-novelty-spec">{page_json(spec)}</script>'
        f'\n<script type="application/octet-stream" id="charnn-novelty">{base64.b64encode(data).decode()}</script>'
        f"\n<script>\n{asset('novelty.js')}</script>"
    )


def page_novelty(loaded: LoadedModel) -> NoveltyIndex:
    """The index of the corpus `loaded` was trained on, for the page: NoveltyUnavailable when the corpus is
    missing or changed, or when the index would make the page larger than MAX_PAGE_NOVELTY_BYTES."""
    index = run_index(loaded)
    size = index.nbytes + index.ids.nbytes
    if size > MAX_PAGE_NOVELTY_BYTES:
        most = MAX_PAGE_NOVELTY_BYTES // (4 + index.ids.dtype.itemsize)
        raise NoveltyUnavailable(
            f"the training text's index would add {4 / 3 * size / 1e6:.0f} MB to the page (at most "
            f"{4 / 3 * MAX_PAGE_NOVELTY_BYTES / 1e6:.0f} MB: corpora of up to {most:,} characters); export without "
            f"--with-novelty, and use charnn sample --novelty"
        )
    return index


def export_html(
    loaded: LoadedModel,
    path: str | os.PathLike,
    *,
    precision: str = "fp32",
    force: bool = False,
    with_novelty: bool = False,
) -> Path:
    """Write the playground page for `loaded` to `path`; an existing file is replaced only with `force`. With
    `with_novelty` the page carries the training text's index (`page_novelty`) and marks copied spans."""
    check_target(path, force=force)
    novelty = page_novelty(loaded) if with_novelty else None
    return write_output(path, build_page(loaded, precision=precision, novelty=novelty).encode("utf-8"), force=force)
