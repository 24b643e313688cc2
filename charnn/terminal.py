"""Text on its way to a terminal: control characters (ESC, NUL, CR, backspace, DEL, the C1 range, bidi
overrides) and bytes that are not UTF-8 become visible escapes (`\\x1b`, `\\r`, `\\u202e`, `\\xff`), so a sample
or a file name cannot move the cursor, clear the screen, retitle the window or reorder a line.

Not the product: stdout redirected to a file or a pipe gets the exact text and bytes (charnn.cli.output decides).
"""

from __future__ import annotations

from functools import lru_cache

_CONTROLS = (*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_SURROGATES = range(0xD800, 0xE000)  # lone surrogates: 0xDC80-0xDCFF are undecodable bytes (surrogateescape)


def _escape(code: int) -> str:
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # the byte itself
    return chr(code).encode("unicode_escape").decode("ascii")


@lru_cache(maxsize=4)
def _table(keep: str) -> dict[int, str]:
    return {code: _escape(code) for code in (*_CONTROLS, *_SURROGATES) if chr(code) not in keep}


def for_terminal(text: str, *, keep: str = "\n\t") -> str:
    """`text` with every control character but those in `keep` written as a visible escape; lone surrogates
    (bytes that were not UTF-8, decoded with errors="surrogateescape") as `\\xNN`. Backslashes are left as they
    are: the escapes are for the eye, not a reversible encoding."""
    return text.translate(_table(keep))
