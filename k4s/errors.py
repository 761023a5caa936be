"""The one error type a user meets: a message, a hint, an exit code."""

from __future__ import annotations


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
        return line


class ConfigError(K4sError):
    """Bad configuration: exit code 2, like a usage error."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint, code=2)
