"""What a prompt may be: one check for generation, the routers and the client. A leaf: it imports nothing from
the package but its errors."""
from __future__ import annotations

from .errors import PromptError


def check_prompt(text) -> str:
    """Return ``text`` if it is a non-blank string, else raise PromptError (for generation and the routers)."""
    if not isinstance(text, str):
        raise PromptError(f"A prompt must be a str, got {type(text).__name__} ({text!r:.60}). Pass the prompt text, "
                          "e.g. 'Верни JSON'.")
    if not text.strip():
        raise PromptError(f"The prompt is empty or only whitespace ({text!r:.20}): there is nothing to answer or "
                          "route. Type a question or an instruction.")
    return text
