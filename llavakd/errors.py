"""Exceptions the CLI turns into a one-line message and a non-zero exit (no traceback)."""


class LlavaKDError(Exception):
    """A user-facing error: bad input, a missing file, an inconsistent configuration."""


class UnknownNameError(LlavaKDError, KeyError):
    """A name (an LLM, a shape) that the project does not know; a user error that is also a KeyError."""

    def __str__(self) -> str:  # KeyError's own quotes the message
        return str(self.args[0]) if self.args else ""


class ConfigError(LlavaKDError):
    """A configuration file or override is invalid; the message lists every problem at once."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")
