"""The two HTML blocks every report section uses: a note paragraph and a key-value table. The sections themselves
are `curves`, `record`, `passage` and `lookback`.
"""

from __future__ import annotations

import html
from typing import Any


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def kv_table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'
