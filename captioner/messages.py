"""One-line error texts from exceptions, shared by every command (no torch import here)."""

from __future__ import annotations

import re

LIMIT = 300  # characters: a sentence longer than this ends at a word, with "..."


def first_sentence(e: BaseException) -> str:
    """An exception's first sentence, whole (a long library message is not cut mid-sentence), or its
    type name when it has no text. A KeyError's text is its key, without the repr quotes str() adds."""
    text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
    text = text.strip().splitlines()[0].strip() if text.strip() else type(e).__name__
    text = re.split(r"(?<=[.;!?])\s+(?=[A-Z'\"(])", text, maxsplit=1)[0]
    if len(text) > LIMIT:
        text = text[:LIMIT].rsplit(" ", 1)[0] + " ..."
    return text
