"""The one error type a user meets: a message, a hint, an exit code."""

from __future__ import annotations

import re

# what could end a console line or rewrite it: C0 and C1 controls (newline, CR, ESC), DEL,
# Unicode's own line and paragraph separators, and the marks that reorder or hide text (bidi
# overrides and isolates, zero-width characters)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(text: str, limit: int = 0) -> str:
    """text as one line that cannot forge another: every control character escaped (\\n, \\x1b),
    cut to limit characters if limit is set. For every value that comes from outside."""
    out = _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1] if ord(m.group()) < 0xa0
                           else f"\\u{ord(m.group()):04x}", text)
    return out if not limit or len(out) <= limit else out[:limit - 3] + "..."


class K4sError(Exception):
    """An error a user can act on; printed as one line plus a hint, never a traceback."""

    def __init__(self, message: str, hint: str | None = None, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def __str__(self) -> str:
        return self.message

    def render(self, prog: str = "k4s") -> str:
        line = f"{prog}: error: {self.message}"
        if self.hint:
            line += f" (hint: {self.hint})"
        return printable(line)


class ConfigError(K4sError):
    """Bad configuration: exit code 2, like a usage error."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint, code=2)
