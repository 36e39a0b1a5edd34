"""How an embedding key (engine and model, e.g. `zonos:Zyphra/Zonos-v0.1-hybrid`) names a file or object.

Keys hold characters that are not safe in file names or object keys (`/`, `:`), so the file and
object backends name an embedding by a digest of its key; the database keeps the key itself.
"""

from __future__ import annotations

import hashlib

EMBEDDING_KEY_MAX_CHARS = 200


def embedding_suffix(key: str) -> str:
    """`.<16 hex>.emb`: the same for the same key on every replica."""
    return f".{hashlib.sha256(key.encode()).hexdigest()[:16]}.emb"
