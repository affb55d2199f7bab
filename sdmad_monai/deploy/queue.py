"""The durable job queue of the DICOM listener (``sdmad listen``): one SQLite database from the standard library.

One row per study (:class:`StudyJob`), one per received instance, one per attempt to send a study's SRs
(:class:`SendAttempt`). The journal is WAL and ``synchronous=FULL``: a transaction that returned is on disk, so a
crash or a power cut after it loses nothing. A study moves through these states (:class:`State`)::

    receiving --(settle_seconds without a new instance)--> ready --(a worker)--> processing
    processing --(a selected series incomplete, study_timeout not reached)--> receiving (held until the timeout)
    processing --(SRs written)--> sending --(C-STORE accepted)--> done
    processing / sending --(no SR to send, or the destination refused every attempt)--> failed / done

A new instance of a study in any state reopens it (``receiving``, ``generation + 1``): work started on the older set
of instances is then not recorded (every transition out of ``processing`` or ``sending`` names the generation it was
made for), and the study is processed again once it settles. An instance received twice (the sender retries after
a lost answer) is recorded once and does not reopen the study; nor does one of the listener's own SRs coming back
(a PACS sending the whole study again): the SOPInstanceUIDs the destination accepted are kept.

On start (:meth:`JobQueue.recover`), a study left in ``processing`` goes back to ``ready``, one in ``sending`` is
due at once, and one still ``receiving`` waits a full settle time again (its sender resends what was cut off). The
SR's UIDs are derived from its inputs, so processing again writes the same SR, and sending it again replaces the
copy the destination may already hold instead of adding a second one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

__all__ = ["JobQueue", "Received", "SendAttempt", "State", "StudyJob"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    opened_at REAL NOT NULL,
    last_received REAL NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 1,
    hold_until REAL NOT NULL DEFAULT 0,
    process_attempts INTEGER NOT NULL DEFAULT 0,
    send_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '[]',
    partial TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state);
CREATE TABLE IF NOT EXISTS instances (
    study_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (study_uid, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS sent (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS send_attempts (
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL
);
"""


class State(str, Enum):
    """Where a study is (see the module docstring)."""

    RECEIVING = "receiving"
    READY = "ready"
    PROCESSING = "processing"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


class Received(str, Enum):
    """What :meth:`JobQueue.record_instance` did with an instance."""

    OPENED = "opened"  # the first instance of a study the queue did not know
    ADDED = "added"  # a new instance of a study still receiving
    REOPENED = "reopened"  # a new instance of a study in any other state
    REPEATED = "repeated"  # recorded before (the sender retried): nothing changes


@dataclass(frozen=True)
class StudyJob:
    """One study of the queue, as its row reads now.

    Attributes:
        study_uid: StudyInstanceUID.
        state: see :class:`State`.
        calling_aet: the AE title that sent its last new instance.
        opened_at: when its first instance (of this generation) arrived (seconds since the epoch).
        last_received: when its last instance arrived.
        instances: distinct instances received.
        generation: 1, plus one each time a new instance reopened the study.
        hold_until: an incomplete study is not looked at again before this time (unless an instance arrives).
        process_attempts: how often processing of this generation started (a crash each time is given up on).
        send_attempts: attempts to send this generation's SRs.
        next_attempt_at: when the next send attempt is due.
        outputs: the SR files to send.
        partial: what was missing when the study was processed without it (empty: complete).
        reason: the outcome in words (``done``, ``failed``) or why the study waits.
        updated: when the row last changed.
    """

    study_uid: str
    state: State
    calling_aet: str
    opened_at: float
    last_received: float
    instances: int
    generation: int
    hold_until: float
    process_attempts: int
    send_attempts: int
    next_attempt_at: float
    outputs: tuple[str, ...]
    partial: str
    reason: str
    updated: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StudyJob:
        return cls(
            study_uid=row["study_uid"],
            state=State(row["state"]),
            calling_aet=row["calling_aet"],
            opened_at=row["opened_at"],
            last_received=row["last_received"],
            instances=row["instances"],
            generation=row["generation"],
            hold_until=row["hold_until"],
            process_attempts=row["process_attempts"],
            send_attempts=row["send_attempts"],
            next_attempt_at=row["next_attempt_at"],
            outputs=tuple(json.loads(row["outputs"])),
            partial=row["partial"],
            reason=row["reason"],
            updated=row["updated"],
        )


@dataclass(frozen=True)
class SendAttempt:
    """One attempt to send a study's SRs to the destination."""

    study_uid: str
    generation: int
    attempt: int
    at: float
    ok: bool
    detail: str


class JobQueue:
    """The listener's SQLite queue (see the module docstring); safe to use from several threads.

    Args:
        path: the database file (created with its tables when missing).
        clock: the time source (``time.time``; tests pass their own).
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] | None = None):
        self.path = Path(path)
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        with self._transaction() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)

    def now(self) -> float:
        return float(self._clock())

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connection
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    # ------------------------------------------------------------------------------------------ receiving
    def record_instance(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, path: str, calling_aet: str
    ) -> Received:
        """Record an instance already durably on disk, in one transaction.

        A new instance opens its study (``receiving``) or reopens it from any other state (``generation + 1``);
        a repeated one only keeps a ``receiving`` study from settling.
        """
        now = self.now()
        with self._transaction() as db:
            known = db.execute(
                "SELECT 1 FROM instances WHERE study_uid = ? AND sop_instance_uid = ?", (study_uid, sop_instance_uid)
            ).fetchone()
            row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if known:
                if row is not None and row["state"] == State.RECEIVING.value:
                    db.execute(
                        "UPDATE studies SET last_received = ?, updated = ? WHERE study_uid = ?", (now, now, study_uid)
                    )
                return Received.REPEATED
            db.execute(
                "INSERT INTO instances (study_uid, sop_instance_uid, series_uid, path, calling_aet, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (study_uid, sop_instance_uid, series_uid, path, calling_aet, now),
            )
            if row is None:
                db.execute(
                    "INSERT INTO studies (study_uid, state, calling_aet, opened_at, last_received, instances, updated) "
                    "VALUES (?, ?, ?, ?, ?, 1, ?)",
                    (study_uid, State.RECEIVING.value, calling_aet, now, now, now),
                )
                return Received.OPENED
            if row["state"] == State.RECEIVING.value:
                db.execute(
                    "UPDATE studies SET last_received = ?, instances = instances + 1, calling_aet = ?, hold_until = 0, "
                    "updated = ? WHERE study_uid = ?",
                    (now, calling_aet, now, study_uid),
                )
                return Received.ADDED
            # reopened: whatever was done or is under way concerned fewer instances
            db.execute(
                "UPDATE studies SET state = ?, generation = generation + 1, opened_at = ?, last_received = ?, "
                "instances = instances + 1, calling_aet = ?, hold_until = 0, process_attempts = 0, "
                "send_attempts = 0, next_attempt_at = 0, outputs = '[]', partial = '', reason = '', updated = ? "
                "WHERE study_uid = ?",
                (State.RECEIVING.value, now, now, calling_aet, now, study_uid),
            )
            return Received.REOPENED

    def settle(self, settle_seconds: float) -> list[StudyJob]:
        """Move every ``receiving`` study without a new instance for ``settle_seconds`` (and not held) to
        ``ready``; return them."""
        now = self.now()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM studies WHERE state = ? AND last_received + ? <= ? AND hold_until <= ? "
                "ORDER BY last_received",
                (State.RECEIVING.value, settle_seconds, now, now),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE studies SET state = ?, reason = '', updated = ? WHERE study_uid = ?",
                    (State.READY.value, now, row["study_uid"]),
                )
        return [StudyJob.from_row(row) for row in rows]

    # ------------------------------------------------------------------------------------------- working
    def due(self, exclude: Sequence[str] = ()) -> list[StudyJob]:
        """Studies a worker should take now: ``ready`` ones, and ``sending`` ones whose next attempt is due; oldest
        first, leaving out ``exclude`` (those a worker holds)."""
        now = self.now()
        with self._lock:
            rows = self._connection.execute(
                "SELECT * FROM studies WHERE state = ? OR (state = ? AND next_attempt_at <= ?) ORDER BY updated",
                (State.READY.value, State.SENDING.value, now),
            ).fetchall()
        return [StudyJob.from_row(row) for row in rows if row["study_uid"] not in exclude]

    def start_processing(self, study_uid: str) -> StudyJob | None:
        """``ready`` -> ``processing`` (one more processing attempt); ``None`` when the study is not ``ready``."""
        now = self.now()
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE studies SET state = ?, process_attempts = process_attempts + 1, updated = ? "
                "WHERE study_uid = ? AND state = ?",
                (State.PROCESSING.value, now, study_uid, State.READY.value),
            ).rowcount
            row = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        return StudyJob.from_row(row) if changed else None

    def hold(self, study_uid: str, generation: int, until: float, reason: str) -> bool:
        """``processing`` -> ``receiving``, not looked at again before ``until`` unless an instance arrives."""
        return self._move(
            study_uid,
            generation,
            (State.PROCESSING,),
            "state = ?, hold_until = ?, process_attempts = 0, reason = ?",
            (State.RECEIVING.value, until, reason),
        )

    def processed(self, study_uid: str, generation: int, outputs: Sequence[str], partial: str) -> bool:
        """``processing`` -> ``sending`` with the SR files to send, due now."""
        return self._move(
            study_uid,
            generation,
            (State.PROCESSING,),
            "state = ?, outputs = ?, partial = ?, send_attempts = 0, next_attempt_at = 0, reason = ''",
            (State.SENDING.value, json.dumps([str(p) for p in outputs]), partial),
        )

    def finish(self, study_uid: str, generation: int, state: State, reason: str, partial: str | None = None) -> bool:
        """``processing`` / ``sending`` -> ``done`` or ``failed`` with the reason."""
        if state not in (State.DONE, State.FAILED):
            raise ValueError(f"finish() takes State.DONE or State.FAILED, got {state!r}.")
        sets, values = "state = ?, reason = ?", [state.value, reason]
        if partial is not None:
            sets, values = sets + ", partial = ?", [*values, partial]
        return self._move(study_uid, generation, (State.PROCESSING, State.SENDING), sets, tuple(values))

    def send_failed(self, study_uid: str, generation: int, detail: str, next_attempt_at: float) -> bool:
        """Keep a ``sending`` study for another attempt at ``next_attempt_at``."""
        return self._move(
            study_uid, generation, (State.SENDING,), "next_attempt_at = ?, reason = ?", (next_attempt_at, detail)
        )

    def back_to_ready(self, study_uid: str, generation: int, reason: str) -> bool:
        """``sending`` -> ``ready``: the SR files to send are gone, so the study is processed again."""
        return self._move(study_uid, generation, (State.SENDING,), "state = ?, reason = ?", (State.READY.value, reason))

    def _move(
        self, study_uid: str, generation: int, states: Sequence[State], sets: str, values: Sequence[object]
    ) -> bool:
        now = self.now()
        marks = ", ".join("?" for _ in states)
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE studies SET {sets}, updated = ? WHERE study_uid = ? AND generation = ? AND state IN ({marks})",
                (*values, now, study_uid, generation, *(s.value for s in states)),
            ).rowcount
        return bool(changed)

    def record_attempt(self, study_uid: str, generation: int, ok: bool, detail: str) -> int:
        """Record one send attempt; returns the number of attempts for this generation so far."""
        now = self.now()
        with self._transaction() as db:
            db.execute(
                "UPDATE studies SET send_attempts = send_attempts + 1, updated = ? "
                "WHERE study_uid = ? AND generation = ?",
                (now, study_uid, generation),
            )
            count = db.execute(
                "SELECT COUNT(*) FROM send_attempts WHERE study_uid = ? AND generation = ?", (study_uid, generation)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO send_attempts (study_uid, generation, attempt, at, ok, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (study_uid, generation, count + 1, now, int(ok), detail),
            )
        return int(count) + 1

    def record_sent(self, study_uid: str, sop_instance_uids: Sequence[str]) -> None:
        """Remember the SRs the destination accepted, to recognise them when a PACS sends the study again."""
        now = self.now()
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO sent (sop_instance_uid, study_uid, at) VALUES (?, ?, ?)",
                [(uid, study_uid, now) for uid in sop_instance_uids],
            )

    def was_sent(self, sop_instance_uid: str) -> bool:
        """Whether this instance is one of the SRs the listener sent (see :meth:`record_sent`)."""
        with self._lock:
            row = self._connection.execute(
                "SELECT 1 FROM sent WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        return row is not None

    # ------------------------------------------------------------------------------------------ restarting
    def recover(self) -> list[StudyJob]:
        """After a stop or a crash: ``processing`` -> ``ready``, ``sending`` due now, and a ``receiving`` study
        settles no sooner than ``settle_seconds`` from now. Returns the studies moved to ``ready`` or due."""
        now = self.now()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM studies WHERE state IN (?, ?)", (State.PROCESSING.value, State.SENDING.value)
            ).fetchall()
            db.execute(
                "UPDATE studies SET state = ?, updated = ? WHERE state = ?",
                (State.READY.value, now, State.PROCESSING.value),
            )
            db.execute("UPDATE studies SET next_attempt_at = 0 WHERE state = ?", (State.SENDING.value,))
            # a study cut off mid-transfer: give the sender, who resends after the failure, a full settle time
            db.execute(
                "UPDATE studies SET last_received = MAX(last_received, ?) WHERE state = ?", (now, State.RECEIVING.value)
            )
        return [StudyJob.from_row(row) for row in rows]

    # -------------------------------------------------------------------------------------------- reading
    def get(self, study_uid: str) -> StudyJob | None:
        with self._lock:
            row = self._connection.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        return StudyJob.from_row(row) if row is not None else None

    def jobs(self, states: Sequence[State] = ()) -> list[StudyJob]:
        """Every study (or those in ``states``), oldest change first."""
        query, values = "SELECT * FROM studies", [s.value for s in states]
        if states:
            query += f" WHERE state IN ({', '.join('?' for _ in states)})"
        with self._lock:
            rows = self._connection.execute(query + " ORDER BY updated", values).fetchall()
        return [StudyJob.from_row(row) for row in rows]

    def attempts(self, study_uid: str) -> list[SendAttempt]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT * FROM send_attempts WHERE study_uid = ? ORDER BY rowid", (study_uid,)
            ).fetchall()
        return [
            SendAttempt(r["study_uid"], r["generation"], r["attempt"], r["at"], bool(r["ok"]), r["detail"])
            for r in rows
        ]

    def series_counts(self, study_uid: str) -> dict[str, int]:
        """Instances recorded per SeriesInstanceUID."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT series_uid, COUNT(*) AS n FROM instances WHERE study_uid = ? GROUP BY series_uid ORDER BY "
                "series_uid",
                (study_uid,),
            ).fetchall()
        return {r["series_uid"]: int(r["n"]) for r in rows}
