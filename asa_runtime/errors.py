"""The error types that mean bad input or a resource limit. Each carries a one-line message; the CLI and
the server print it (or return it as a 4xx body) instead of a traceback."""
from __future__ import annotations


class RegistryError(ValueError):
    """A name or path that does not resolve to a model folder."""


class CheckpointError(Exception):
    """A model folder that cannot be read (missing, truncated, corrupted or inconsistent)."""


class BackendError(ValueError):
    """A backend that cannot run here (missing optional package, unsupported device or option)."""


class GenerationError(ValueError):
    """Bad input to the engine (prompt, sizes, sampling options, token ids)."""


class PromptCacheError(GenerationError):
    """A prompt cache that cannot be used (unreadable, made by another model, does not fit)."""


class CacheFull(RuntimeError):
    """The context is full, or the policy can still select more keys than the bounded cache holds."""


def require_unicode(text: str, what: str = "text") -> str:
    """`text` unchanged if it is valid Unicode (encodable as UTF-8), else GenerationError. Command-line
    arguments with undecodable bytes arrive as lone surrogates (Python's surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GenerationError(f"{what} is not valid Unicode (undecodable byte or lone surrogate at "
                              f"character {e.start})") from None
    return text


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# Exception types whose messages are one line and mean bad input (caught at the CLI and server edges).
USER_ERRORS: tuple[type[BaseException], ...] = (RegistryError, CheckpointError, BackendError, GenerationError,
                                                CacheFull, OSError, UnicodeError, ValueError)
