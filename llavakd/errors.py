"""Exceptions the CLI turns into a one-line message and a non-zero exit (no traceback)."""


class LlavaKDError(Exception):
    """A user-facing error: bad input, a missing file, an inconsistent configuration."""


class ConfigError(LlavaKDError):
    """A configuration file or override is invalid; the message lists every problem at once."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")
