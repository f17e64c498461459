"""Result bodies kept in memory, per job and kind, under the job's count of reported epochs.

A job's results change only when its driver records an epoch, and every record bumps that count in the same
transaction (store.record_epoch), so a body stored under the count a request reads is that request's answer.
Building a 10,000-row Parquet or JSON body is most of a results query's time; a dashboard polling a running
job, or anyone reading a finished one, then gets it from here. A newer count replaces the older body.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable


class ResultCache:
    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict[tuple, tuple[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, version: int, build: Callable[[], bytes]) -> bytes:
        """The body for `key` (job id, kind) at `version` (its epoch count): cached, or built and kept."""
        with self._lock:
            found = self._items.get(key)
            if found is not None and found[0] == version:
                self._items.move_to_end(key)
                return found[1]
        body = build()  # outside the lock: other jobs' queries go on meanwhile
        if len(body) <= self.max_bytes:
            with self._lock:
                old = self._items.pop(key, None)
                if old is not None:
                    self.size -= len(old[1])
                self._items[key] = (version, body)
                self.size += len(body)
                while self.size > self.max_bytes:
                    _, (_, evicted) = self._items.popitem(last=False)
                    self.size -= len(evicted)
        return body
