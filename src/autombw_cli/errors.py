"""The errors autombw raises for things a user can fix.

Every message says what went wrong, where (file, field, instance, tensor key) and, through
``hint``, what to do next. The CLI prints ``message`` and ``hint`` and exits with the family's
code (``exit_codes.py``); bugs (``TypeError``, failed asserts...) are never wrapped in these.

    AutombwError                 exit 1
    ├── ConfigError              exit 2  bad config, CLI option, weights string, recipe, payload
    │   ├── WeightsError                 a weight list/string with a wrong count or bad number
    │   └── PayloadError                 a payload file or wildcard
    ├── WebUIError               exit 3  an instance is unreachable, times out or answers an error
    ├── ModelMismatchError       exit 4  checkpoints that cannot be merged / are not checkpoints
    ├── ScorerError              exit 5  the scorer cannot load or score
    ├── JournalError             exit 6  a history/log/recipe file that cannot be read or written
    └── OutputExistsError        exit 7  refusing to overwrite a file without --force
"""

from __future__ import annotations

from autombw_cli import exit_codes
from autombw_cli.redact import redact_urls


class AutombwError(Exception):
    """Base class: ``message`` is what the user reads, ``hint`` what to do about it."""

    exit_code = exit_codes.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(AutombwError):
    """Invalid configuration, option, weights or recipe text."""

    exit_code = exit_codes.CONFIG


class WeightsError(ConfigError):
    """A weights list or string that cannot be read (count, number, name or range)."""


class PayloadError(ConfigError):
    """A payload file or wildcard that cannot be read or expanded."""


class WebUIError(AutombwError):
    """A WebUI instance is unreachable, timed out, or answered with an error."""

    exit_code = exit_codes.WEBUI

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        instance: str | None = None,
        status_code: int | None = None,
    ) -> None:
        # an instance's URL may carry credentials or a token: never in a message or log line
        if instance:
            instance = redact_urls(instance)
        if instance and not message.startswith(instance):
            message = f"{instance}: {message}"
        super().__init__(redact_urls(message), hint=hint if hint is None else redact_urls(hint))
        self.instance = instance
        self.status_code = status_code

    #: the instance itself did not answer (unreachable, timed out): a scheduler parks it
    instance_down: bool = False

    @property
    def needs_attention(self) -> bool:
        """A refusal that repeats on every try (credentials, no ``--api``, no bridge, a request
        the WebUI rejects, a WebUI the bridge cannot merge in): retrying cannot help."""
        s = self.status_code
        return s is not None and 400 <= s < 500 and s not in (408, 429)


class ModelMismatchError(AutombwError):
    """Two checkpoints that cannot be merged, or a file that is not a checkpoint."""

    exit_code = exit_codes.MODEL


class ScorerError(AutombwError):
    """The scorer cannot be loaded or cannot score."""

    exit_code = exit_codes.SCORER


class JournalError(AutombwError):
    """A history CSV, log or recipe file that cannot be read or written."""

    exit_code = exit_codes.JOURNAL


class OutputExistsError(AutombwError):
    """An output file exists and overwriting was not allowed."""

    exit_code = exit_codes.OUTPUT_EXISTS
