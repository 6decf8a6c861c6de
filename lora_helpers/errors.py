"""Errors raised by lora_helpers on bad input.

Every message says what was found, what was expected and how to fix it.
"""


class AdapterError(ValueError):
    """Base of every error this package raises on bad input.

    A ``ValueError``, as PEFT's own errors for bad input are, so ``except ValueError`` written for PEFT code
    catches it too."""


class BaseModelError(AdapterError):
    """The base model cannot be loaded (unknown preset, missing package, no GPU, gated repo)."""


class AdapterNotFoundError(AdapterError, LookupError):
    """An adapter folder, file, Hub repo or loaded name does not exist (also a ``LookupError``)."""


class AdapterFileError(AdapterError):
    """An adapter file exists but is unreadable (truncated, corrupt, pickle without opt-in)."""


class BaseMismatchError(AdapterError):
    """An adapter was trained for another base model (names or tensor shapes disagree)."""


class AdapterExistsError(AdapterError):
    """A name or folder is already taken and replace/overwrite was not asked for."""


class PromptError(AdapterError):
    """A prompt is empty, not a string, or longer than the context window."""


class MergeError(AdapterError):
    """Merging or combining adapters failed, or the merged model does not match the adapter."""


class StorageError(AdapterError, OSError):
    """Saving or fetching an adapter (session, Drive, Hub) failed: a full or read-only disk, a target that
    holds something the package did not write, a Hub that timed out, cut the connection or failed
    (also an ``OSError``, as file and network failures are)."""


class ServeError(AdapterError):
    """A serving engine (vLLM) failed to start, cannot be reached, or answered with an error or with
    something that is not OpenAI's format."""


class AdapterNotServedError(ServeError, AdapterNotFoundError):
    """The server does not serve an adapter (or model) of that name."""


class UntrainedAdapterWarning(UserWarning):
    """An adapter whose every lora_B is zero was loaded or switched to: it changes nothing (never trained,
    or made with ``add_adapter``). A class of its own, so a notebook can say it in the learner's language."""
