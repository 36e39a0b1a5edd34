"""A durable local outbox: session finalizations that could not be delivered yet.

When the sessions API stays unreachable through every retry, the agent must not lose the fact
that a session ended. The entry is appended to a JSON-lines file and fsynced before the call
returns, so it survives a crash or restart of the process; a later replay delivers it and only
then removes it. The file is rewritten atomically (temp file, fsync, rename), and an advisory
`flock` serializes writers, because several agent processes on one node may share the path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

Outcome = Literal["delivered", "rejected", "failed"]


@dataclass
class OutboxEntry:
    """One pending finalization. `attempts` counts replays that did not deliver it."""

    session_id: str
    usage: dict[str, Any] | None = None
    kind: str = "finalize"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)
    attempts: int = 0

    @classmethod
    def from_json(cls, line: str) -> OutboxEntry:
        data = json.loads(line)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class Outbox:
    """Append, list and replay pending entries in one JSON-lines file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, entry: OutboxEntry) -> None:
        """Write one entry and fsync it: when this returns, the entry survives a crash."""
        line = json.dumps(asdict(entry), separators=(",", ":")) + "\n"
        with self._locked(), open(self.path, "a+b") as fh:
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line  # never glue an entry onto a line torn by a crash
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        logger.warning("session %s finalize queued in outbox %s", entry.session_id[:64], self.path)

    def pending(self) -> list[OutboxEntry]:
        with self._locked():
            return self._read()

    def __len__(self) -> int:
        return len(self.pending())

    def _read(self) -> list[OutboxEntry]:
        if not self.path.exists():
            return []
        entries: list[OutboxEntry] = []
        with open(self.path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    entries.append(OutboxEntry.from_json(line))
                except (ValueError, TypeError):
                    # A torn last line from a crash mid-write: keep going, say so.
                    logger.warning("outbox %s line %d is unreadable; skipped", self.path, number)
        return entries

    def _rewrite(self, entries: list[OutboxEntry]) -> None:
        if not entries:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for entry in entries:
                fh.write(json.dumps(asdict(entry), separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _archive_rejected(self, entries: list[OutboxEntry]) -> None:
        """Entries the server refused for good are kept beside the outbox, never silently lost."""
        if not entries:
            return
        with open(self.path.with_name(self.path.name + ".rejected"), "a", encoding="utf-8") as fh:
            for entry in entries:
                fh.write(json.dumps(asdict(entry), separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    async def replay(self, deliver: Callable[[OutboxEntry], Awaitable[Outcome]]) -> dict[str, int]:
        """Try each entry once; keep those that failed, drop delivered ones, archive rejected ones.

        The file lock is held only while reading and while rewriting, never across the network
        calls; entries appended meanwhile by another writer are preserved by re-reading before
        the rewrite.
        """
        with self._locked():
            entries = self._read()
        if not entries:
            return {"delivered": 0, "rejected": 0, "failed": 0}
        done: set[str] = set()
        rejected: list[OutboxEntry] = []
        attempted: set[str] = set()
        counts = {"delivered": 0, "rejected": 0, "failed": 0}
        for entry in entries:
            attempted.add(entry.id)
            try:
                outcome = await deliver(entry)
            except Exception as exc:  # a replay must never take the agent down
                logger.warning("outbox delivery of %s raised %s", entry.session_id[:64], type(exc).__name__)
                outcome = "failed"
            counts[outcome] += 1
            if outcome == "delivered":
                done.add(entry.id)
            elif outcome == "rejected":
                done.add(entry.id)
                rejected.append(entry)
        with self._locked():
            current = self._read()
            remaining = []
            for entry in current:
                if entry.id in done:
                    continue
                if entry.id in attempted:
                    entry.attempts += 1
                remaining.append(entry)
            self._archive_rejected(rejected)
            self._rewrite(remaining)
        if counts["delivered"] or counts["rejected"]:
            logger.info(
                "outbox replay: delivered=%d rejected=%d still pending=%d",
                counts["delivered"], counts["rejected"], len(remaining),
            )
        return counts
