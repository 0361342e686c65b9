"""One writer per OUT: a lease object, OUT/_lease.json, held for the whole run and refreshed by a heartbeat.

The lease names its holder (run id, host, pid) and when it last beat. A run that finds a live lease
refuses at once. A lease is *stale* when its heartbeat is older than `STALE_AFTER_S`, or at once when
its holder ran on this host and that process is gone (a killed driver); `--resume` takes a stale lease
over, `--force-unlock` takes any lease over.

How it is claimed, and the race that remains:
- Local disk, free OUT: ``O_CREAT | O_EXCL`` — exactly one of two simultaneous runs wins.
- Object stores (pyarrow has no conditional PUT), and any take-over: write our record, wait
  `SETTLE_S`, read it back, and proceed only if it is still ours (the last writer wins and the others
  refuse). Two runs can both proceed only if one of them takes longer than `SETTLE_S` between reading
  "no lease" and its PUT landing, while the other's read-back falls inside that gap: a window of
  about one request's latency, which S3's read-after-write consistency keeps from growing.
- Staleness compares the holder's wall clock (the heartbeat time it wrote) with the reader's: hosts
  are assumed to agree within a few seconds (NTP), far below `STALE_AFTER_S`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from editflow import storage
from editflow.errors import EditflowError

LEASE_NAME = "_lease.json"
STALE_AFTER_S = 60.0  # no heartbeat for this long: the holder is taken for dead
HEARTBEAT_S = 10.0
SETTLE_S = 1.0  # write, wait, read back: how long a competing write has to show up


class LeaseHeld(EditflowError):
    """Another run holds OUT; the message names it and says how to take over."""


@dataclass(frozen=True)
class LeaseRecord:
    """What the lease object holds."""

    run_id: str
    host: str
    pid: int
    token: str  # unique per claim: tells our record from a competitor's
    acquired_at: float
    heartbeat_at: float

    def age(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat."""
        return (time.time() if now is None else now) - self.heartbeat_at

    def holder_gone(self) -> bool:
        """True when the holder ran on this host and its process no longer exists."""
        return self.host == socket.gethostname() and not _pid_alive(self.pid)

    def is_stale(self, stale_after_s: float = STALE_AFTER_S) -> bool:
        return self.age() > stale_after_s or self.holder_gone()

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, last heartbeat {max(0.0, self.age()):.0f} s ago)"

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()


def lease_location(out_dir: str | os.PathLike) -> str:
    return storage.join(os.fspath(out_dir), LEASE_NAME)


def read_lease(out_dir: str | os.PathLike) -> LeaseRecord | None:
    """The current lease of OUT, or None. An unreadable lease counts as a stale one (heartbeat 0)."""
    location = lease_location(out_dir)
    try:
        data = storage.read_bytes(location)
    except storage.StorageError:
        if not storage.exists(location):
            return None
        raise
    try:
        return LeaseRecord(**json.loads(data))
    except (ValueError, TypeError):
        return LeaseRecord(run_id="?", host="?", pid=-1, token="?", acquired_at=0.0, heartbeat_at=0.0)


class Lease:
    """A held lease: a daemon thread refreshes it every `heartbeat_s`; `release()` ends it."""

    def __init__(self, out_dir: str, record: LeaseRecord, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.out_dir = out_dir
        self.record = record
        self.lost = False  # set when another run took the lease over (it judged us dead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="editflow-lease", daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                current = read_lease(self.out_dir)
                if current is None or current.token != self.record.token:
                    self.lost = True
                    holder = current.describe() if current else "nobody"
                    print(f"editflow: lost the lease on {self.out_dir} (now held by {holder}); "
                          f"this run keeps going but no longer owns OUT", file=sys.stderr, flush=True)
                    return
                self.record = LeaseRecord(**{**asdict(self.record), "heartbeat_at": time.time()})
                storage.write_bytes(lease_location(self.out_dir), self.record.to_bytes(), durable=False)
            except Exception as exc:  # a transient storage error: try again next beat
                print(f"editflow: lease heartbeat failed ({exc}); retrying", file=sys.stderr, flush=True)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        self._thread.join()
        try:
            current = read_lease(self.out_dir)
            if current is not None and current.token == self.record.token:
                storage.delete(lease_location(self.out_dir))
        except Exception as exc:  # the run's work is done; a lease left behind only goes stale
            print(f"editflow: could not release the lease on {self.out_dir} ({exc}); it goes stale "
                  f"in {STALE_AFTER_S:.0f} s", file=sys.stderr, flush=True)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(
    out_dir: str | os.PathLike,
    run_id: str,
    *,
    take_over_stale: bool = False,
    force: bool = False,
    stale_after_s: float = STALE_AFTER_S,
    heartbeat_s: float = HEARTBEAT_S,
    settle_s: float = SETTLE_S,
) -> Lease:
    """Claim OUT for `run_id` or raise `LeaseHeld` naming the holder.

    A live lease always refuses (unless `force`); a stale one is taken over only with
    `take_over_stale` (what `--resume` passes) or `force` (`--force-unlock`).
    """
    out = os.fspath(out_dir)
    location = lease_location(out)
    current = read_lease(out)
    if current is not None and not force:
        if not current.is_stale(stale_after_s):
            raise LeaseHeld(
                f"{out} is in use by {current.describe()}; wait for it to end, or if it died, rerun with "
                f"--resume once it has been silent for {stale_after_s:.0f} s (or pass --force-unlock)")
        if not take_over_stale:
            raise LeaseHeld(f"{out} holds a stale lease of {current.describe()}; pass --resume to take it "
                            f"over and continue that run, or --force-unlock")
    now = time.time()
    record = LeaseRecord(run_id=run_id, host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                         acquired_at=now, heartbeat_at=now)
    if current is None and storage.is_local(out):
        storage.makedirs(out)
        if not storage.create_exclusive(location, record.to_bytes()):
            winner = read_lease(out)
            raise LeaseHeld(f"{out} is in use by {winner.describe() if winner else 'another run'}")
    else:
        storage.write_bytes(location, record.to_bytes())
        time.sleep(settle_s)
        back = read_lease(out)
        if back is None or back.token != record.token:
            raise LeaseHeld(f"{out} is in use by {back.describe() if back else 'another run'} "
                            f"(it claimed the lease at the same moment)")
    return Lease(out, record, heartbeat_s=heartbeat_s)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a killed process its parent has not reaped yet is a zombie: gone for our purposes
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
