"""Text handling before synthesis: validation, normalisation and sentence splitting.

Sentence splitting is what makes long inputs start as fast as short ones: the router speaks
the first sentence while the next ones are being synthesized. Over-long sentences are cut at
clause boundaries (then at spaces) so no single chunk delays the first byte.
"""

from __future__ import annotations

import re
import unicodedata

from serve_app.engines.base import InvalidInput

# Control characters except tab/newline/carriage return are rejected, not silently spoken.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_WS = re.compile(r"\s+")
# A sentence ends at . ! ? (or their CJK/ellipsis forms), optionally followed by closing quotes
# or brackets, then whitespace. Common abbreviations are protected below.
_END_PUNCT = "[.!?\u2026\u3002\uff01\uff1f]"
_CLOSERS = "[\"'\u201d\u2019)\\]]*"
_SENTENCE_END = re.compile(f"(?<={_END_PUNCT}){_CLOSERS}\\s+")
# The text ends as a sentence would, were whitespace to follow (see `could_end_sentence`).
_ENDS_LIKE_SENTENCE = re.compile(f"{_END_PUNCT}{_CLOSERS}$")
_ABBREVIATIONS = {
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs.", "etc.", "e.g.", "i.e.",
    "inc.", "ltd.", "co.", "no.", "fig.", "approx.", "dept.", "mt.", "u.s.", "a.m.", "p.m.",
}
_CLAUSE_BREAK = re.compile(r"(?<=[,;:\u2014])\s+")


def normalize(text: str, *, max_chars: int) -> str:
    """Validate and normalise user text; raises `InvalidInput` with a message a caller can act on."""
    if not isinstance(text, str):
        raise InvalidInput("input must be a string")
    if _CONTROL.search(text):
        raise InvalidInput("input contains control characters")
    text = unicodedata.normalize("NFC", text)
    text = _WS.sub(" ", text).strip()
    if not text:
        raise InvalidInput("input is empty")
    if len(text) > max_chars:
        raise InvalidInput(f"input is {len(text)} characters; the limit is {max_chars}")
    if not any(ch.isalnum() for ch in text):
        raise InvalidInput("input has nothing to speak (no letters or digits)")
    return text


def split_sentences(text: str, *, max_chars: int = 250) -> list[str]:
    """Split normalised text into speakable sentences, each at most `max_chars` characters."""
    pieces: list[str] = []
    buffer = ""
    parts = [p.strip() for p in _SENTENCE_END.split(text) if p.strip()]
    for i, part in enumerate(parts):
        buffer = f"{buffer} {part}".strip() if buffer else part
        last_word = buffer.rsplit(" ", 1)[-1].lower()
        if last_word in _ABBREVIATIONS or _is_initial(last_word):
            continue
        # "early... as usual": a lower-case continuation is the same sentence.
        if i + 1 < len(parts) and parts[i + 1][:1].islower():
            continue
        pieces.append(buffer)
        buffer = ""
    if buffer:
        pieces.append(buffer)
    out: list[str] = []
    for sentence in pieces:
        out.extend(_bound(sentence, max_chars))
    return [s for s in out if any(ch.isalnum() for ch in s)] or ([text[:max_chars]] if text else [])


def could_end_sentence(text: str) -> bool:
    """Whether `text` is a complete sentence if what comes next starts with whitespace and a capital
    (or is a flush): it ends with end punctuation not after an abbreviation or an initial. The
    realtime socket normalises such a sentence before the text that completes it arrives."""
    text = text.rstrip()
    if not _ENDS_LIKE_SENTENCE.search(text):
        return False
    last_word = text.rstrip("\"'\u201d\u2019)]").rsplit(None, 1)[-1].lower()
    return last_word not in _ABBREVIATIONS and not _is_initial(last_word)


def _is_initial(word: str) -> bool:
    """`J.` in `J. Smith`: a single letter followed by a period is not a sentence end."""
    return len(word) == 2 and word[0].isalpha() and word[1] == "."


def _bound(sentence: str, max_chars: int) -> list[str]:
    """Cut an over-long sentence at clause breaks, then at spaces, then hard."""
    if len(sentence) <= max_chars:
        return [sentence]
    chunks: list[str] = []
    current = ""
    for clause in _CLAUSE_BREAK.split(sentence):
        candidate = f"{current} {clause}".strip() if current else clause
        if len(candidate) <= max_chars:
            current = candidate
            continue
        if current:
            chunks.append(current)
        current = ""
        while len(clause) > max_chars:
            cut = clause.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 3 else max_chars
            chunks.append(clause[:cut].strip())
            clause = clause[cut:].strip()
        current = clause
    if current:
        chunks.append(current)
    return chunks


class SentenceBuffer:
    """Text that arrives in fragments (an LLM's tokens), cut into sentences as soon as each is complete.

    Why not wait for the whole text: the realtime socket speaks the first sentence while the model
    is still writing the rest. A sentence is complete when its end punctuation is followed by
    whitespace (a period alone could still become "3.5" or "example.com"), unless the word before
    is an abbreviation or an initial, or the text after it goes on in lower case. A run-on longer
    than `max_chars` is cut at a clause break (then a space) like `split_sentences` does, so a
    model that never ends a sentence still gets spoken. `flush()` hands out whatever is left.
    """

    def __init__(self, *, max_chars: int = 250) -> None:
        self.max_chars = max_chars
        self.text = ""

    def __len__(self) -> int:
        return len(self.text)

    def append(self, fragment: str) -> list[str]:
        """Add a fragment; the sentences it completes. Raises `InvalidInput` (buffer unchanged)
        for control characters."""
        if _CONTROL.search(fragment):
            raise InvalidInput("text contains control characters", param="text")
        self.text += unicodedata.normalize("NFC", fragment)
        return self._take()

    def flush(self) -> list[str]:
        """Everything buffered, as sentences (end of turn)."""
        text, self.text = _WS.sub(" ", self.text).strip(), ""
        if not any(ch.isalnum() for ch in text):
            return []
        return split_sentences(text, max_chars=self.max_chars)

    def clear(self) -> str:
        """Drop the buffer (barge-in); returns what was dropped."""
        dropped, self.text = self.text, ""
        return dropped

    def _boundary(self) -> int:
        """End of the last complete sentence in the buffer (0: none)."""
        cut = 0
        for match in _SENTENCE_END.finditer(self.text):
            before = self.text[: match.start()].rstrip("\"'\u201d\u2019)]")
            last_word = before.rsplit(None, 1)[-1].lower() if before.strip() else ""
            if last_word in _ABBREVIATIONS or _is_initial(last_word):
                continue
            after = self.text[match.end() :]
            if after[:1].islower():
                continue
            cut = match.end()
        return cut

    def _take(self) -> list[str]:
        cut = self._boundary()
        complete, rest = self.text[:cut], self.text[cut:]
        sentences: list[str] = []
        if complete.strip():
            sentences.extend(self._split(complete))
        if len(rest) > self.max_chars:
            # A run-on: speak what is safely complete, keep the last (still growing) piece.
            pieces = _bound(_WS.sub(" ", rest).strip(), self.max_chars)
            for piece in pieces[:-1]:
                sentences.extend(self._split(piece))
            rest = pieces[-1] + (" " if rest[-1:].isspace() else "")
        self.text = rest
        return sentences

    def _split(self, text: str) -> list[str]:
        text = _WS.sub(" ", text).strip()
        if not any(ch.isalnum() for ch in text):
            return []
        return split_sentences(text, max_chars=self.max_chars)
