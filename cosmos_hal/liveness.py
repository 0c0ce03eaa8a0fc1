"""Keep a run's processes from outliving it, and name the rank that stopped answering.

Two failures left ranks behind before (issue #15): a rank lived on for ten minutes at 100 % CPU
after its launcher was killed, and a rank whose peer had died waited in a collective until the
process-group timeout and then said only "Connection reset by peer" or "Timed out waiting".

* :func:`tie_to_launcher`: a rank started by torchrun dies with torchrun (Linux
  ``PR_SET_PDEATHSIG``), and SIGTERM/SIGINT end it at once, even inside a collective.
* :class:`Heartbeat`: every rank bumps a counter in torchrun's TCPStore from a daemon thread
  (which keeps beating while the main thread waits in a collective). After a collective
  fails, :meth:`Heartbeat.silent_ranks` names the ranks whose counter stood still.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import socket
import sys
import threading
import time

import torch.distributed as tdist

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def tie_to_launcher() -> None:
    """Make this rank end with its launcher: killed when torchrun dies, and ended at once by
    SIGTERM or SIGINT (torchrun forwards these; a rank must not sit out its 30 s grace).

    Default dispositions also undo an inherited "ignore": bash starts background jobs with
    SIGINT ignored, and torchrun passes that on to the ranks.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # not glibc: train.sh's clean-up still ends the rank
            pass
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)


def heartbeat_interval(timeout_s: float) -> float:
    """A tenth of the collective timeout, between 0.5 and 5 s."""
    return min(5.0, max(0.5, timeout_s / 10))


class Heartbeat:
    """A counter per rank in the rendezvous store, bumped every ``interval`` seconds."""

    def __init__(self, rank: int, world_size: int, interval: float,
                 host: str | None = None, port: int | None = None):
        self.rank, self.world_size, self.interval = rank, world_size, interval
        self.host = host or os.environ["MASTER_ADDR"]
        self.port = int(port or os.environ["MASTER_PORT"])
        run = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.prefix = f"cosmos_hal/heartbeat/{run}"
        self._store = self._client()
        self._store.set(f"{self.prefix}/who/{rank}", f"{socket.gethostname()}, pid {os.getpid()}")
        self._store.add(self._key(rank), 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="cosmos_hal-heartbeat", daemon=True)
        self._thread.start()

    def _client(self):
        return tdist.TCPStore(self.host, self.port, is_master=False, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=max(10.0, 3 * self.interval)))

    def _key(self, rank: int) -> str:
        return f"{self.prefix}/beats/{rank}"

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._store.add(self._key(self.rank), 1)
            except Exception:  # slow or gone; keep trying (a daemon thread: it ends with the rank)
                continue

    def stop(self) -> None:
        self._stop.set()

    def silent_ranks(self, beats: float = 3.0) -> dict[int, str]:
        """The other ranks whose counter did not move over ``beats`` intervals: {rank: "host, pid"}.

        Raises what the store raises when it is unreachable (its host, node 0, is gone).
        """
        store = self._client()  # not the beating thread's client: one request at a time each
        others = [r for r in range(self.world_size) if r != self.rank]
        before = [store.add(self._key(r), 0) for r in others]
        time.sleep(beats * self.interval)
        after = [store.add(self._key(r), 0) for r in others]
        silent = [r for r, a, b in zip(others, before, after) if a == b]
        return {r: self._who(store, r) for r in silent}

    def _who(self, store, rank: int) -> str:
        try:
            if store.check([f"{self.prefix}/who/{rank}"]):
                return store.get(f"{self.prefix}/who/{rank}").decode()
        except Exception:
            pass
        return "never checked in"
