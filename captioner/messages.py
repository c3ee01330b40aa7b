"""Error messages: one line per problem, for every command (no torch import here)."""

from __future__ import annotations

import re
import sys

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


def fail(message: str) -> int:
    """Print `error: message` on stderr; return exit status 2 (bad input), for `return fail(...)`."""
    print(f"error: {message}", file=sys.stderr)
    return 2
