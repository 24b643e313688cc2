"""The page `GET /` serves: a small playground that talks to this server's API (streamed generation, and
type-ahead from /v1/next). Its markup, style and script are files shipped with the package, inlined here, so
the page needs nothing else. Not the API: charnn.serve.app.
"""

from __future__ import annotations

import functools
from importlib import resources
from string import Template

from charnn.checkpoint import LoadedModel


@functools.cache
def _asset(name: str) -> str:
    return resources.files("charnn.serve").joinpath(name).read_text(encoding="utf-8")


def index_page(loaded: LoadedModel) -> str:
    """The whole page. It reads the model's description from /v1/model when it opens, and puts model and
    user text in with textContent only, so nothing here is interpolated from the model or a request."""
    del loaded  # the page asks the API; a page built from the model itself can take its place
    script = _asset("page.js").replace("</", "<\\/")  # no `</script>` can end the inline script early
    return Template(_asset("page.html")).substitute(style=_asset("page.css"), script=script)
