"""Flat float32 arrays between the parameter server and the workers on its node, through shared memory.

Ray's object store costs a round trip to the raylet and fresh pages for every object: here a 4.3 MB `ray.put`
takes 2 to 4 ms where copying the same array takes 0.2 ms (docs/distributed.md). The MLP's gradient takes 3 ms,
so the server and its workers move weights and gradients through shared-memory segments of their own instead,
when they are on the same node, and through the object store otherwise (another node, or no room):

- the server keeps its weight versions in slots of one segment (`Slots`): a version is copied into a free slot
  once, and workers on its node read it in place (a `Slot` handle, a few bytes, travels with the work);
- each worker writes its gradient into a one-slot segment of its own, and the exchange call names it.

A slot is reused only once its version is no longer needed: no lease the server holds was handed out on it
(the state's `drop`). A worker still reading it then holds no lease any more, so what it computes is dropped.

Segments are created with every page reserved (`posix_fallocate`: a full /dev/shm fails here, with an error,
not later with SIGBUS), and all of abray's segments on a machine together within a share of /dev/shm (of its
free space plus what they hold already), so that Ray's own object store, which lives there too, keeps its room.
They are named after the run, so that what a dead actor leaves is found: the owner unlinks its segment when it
closes; an actor that restarts removes those of the instance before it (`remove_segments`; Ray kills a dead
worker's child processes, Python's resource tracker among them, so that cannot clean up), and the driver
removes whatever is left on its machine at the end of the run. Should the driver die too (killed, its machine
lost), its actors go with it and nobody is left to clean up: so each owner holds a lock on its segment's file
for as long as it lives (`flock`, released by the kernel when the process dies, whatever kills it), and
whoever makes a segment first removes every abray segment on the machine whose owner is gone
(`remove_orphans`). Readers never unlink. A mapping is never closed by hand: the arrays over it hold it, so a
view cannot outlive its memory.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

SHM_DIR = "/dev/shm"
SHM_PREFIX = "abray-"  # every segment's name starts so
SHM_SHARE = 0.25  # of /dev/shm (its free space and abray's segments in it), at most, for abray's segments
ALIGN = 16  # floats: each slot starts on a 64-byte boundary
ORPHAN_GRACE = 60.0  # seconds: an empty segment this young may be one being made (its owner locks it first)


def segment_paths(prefix: str = SHM_PREFIX) -> list[Path]:
    """The shared-memory files on this machine whose names start with `prefix` (none where there is no /dev/shm)."""
    return list(Path(SHM_DIR).glob(f"{prefix}*")) if os.path.isdir(SHM_DIR) else []


def free_bytes() -> int:
    """Free bytes in /dev/shm (0 where there is none)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def segments_bytes() -> int:
    """Bytes that abray's segments on this machine hold (every run's)."""
    total = 0
    for path in segment_paths():
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # unlinked meanwhile
            pass
    return total


def shm_room() -> int:
    """Bytes of shared memory one more segment may take: what keeps abray's segments together within their
    share of /dev/shm (0 where there is no /dev/shm)."""
    free = free_bytes()
    if free <= 0:
        return 0
    held = segments_bytes()
    return max(0, int((free + held) * SHM_SHARE) - held)


def remove_orphans() -> int:
    """Unlink every abray segment on this machine whose owner is gone (no process holds its lock); how many."""
    removed = 0
    for path in segment_paths():
        try:
            st = path.stat()
            if st.st_size == 0 and time.time() - st.st_mtime < ORPHAN_GRACE:
                continue  # being made: its owner takes the lock before it gives the file a size
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # unlinked meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its owner lives
            continue
        finally:
            os.close(fd)  # (the lock, if taken, goes with it)
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def segment_prefix(run_id: str, owner: Optional[str] = None) -> str:
    """The start of the names of the segments of run `run_id` that `owner` makes ("v": the server's versions;
    "s<k>": shard k's; "w<i>": worker i's gradients; None: every owner's); each adds a random suffix per
    (re)start."""
    return f"{SHM_PREFIX}{run_id}-" + (f"{owner}-" if owner is not None else "")


def remove_segments(prefix: str) -> int:
    """Unlink every segment whose name starts with `prefix` (on this machine); how many there were."""
    found = segment_paths(prefix)
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


class Segment:
    """One shared-memory file, mapped, as float32: made by its owner (`size` given: every page reserved now), or
    opened by a reader. Never unmapped by hand: arrays over it hold the mapping, which goes with the last of
    them."""

    def __init__(self, name: str, size: Optional[int] = None):
        self.name, self.path, self.owned = name, f"{SHM_DIR}/{name}", size is not None
        fd = os.open(self.path, (os.O_CREAT | os.O_EXCL | os.O_RDWR) if self.owned else os.O_RDWR, 0o600)
        try:
            if self.owned:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)  # held while this process lives (`remove_orphans`)
                    os.posix_fallocate(fd, 0, size)  # every page now, or an error now (not SIGBUS later)
                except OSError:
                    os.unlink(self.path)
                    raise
            self.array = np.frombuffer(mmap.mmap(fd, os.fstat(fd).st_size), dtype=np.float32)
        except BaseException:
            os.close(fd)
            raise
        if self.owned:
            self.lock_fd: Optional[int] = fd  # kept open: the lock lives with it
        else:
            self.lock_fd = None
            os.close(fd)

    def unlink(self) -> None:
        """Remove the file (mappings stay valid until let go)."""
        if not self.owned:
            return
        self.owned = False
        Path(self.path).unlink(missing_ok=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


@dataclass(frozen=True)
class Slot:
    """Where one array lives: slot `index` of segment `segment` (slots `stride` float32 apart), `numel` float32
    from `offset` on in it."""

    segment: str
    index: int
    numel: int
    stride: int
    offset: int = 0

    def view(self, array: np.ndarray) -> np.ndarray:
        start = self.index * self.stride + self.offset
        return array[start:start + self.numel]

    def part(self, start: int, stop: int) -> "Slot":
        """Elements [start, stop) of this slot's array."""
        return Slot(self.segment, self.index, stop - start, self.stride, self.offset + start)


def _stride(numel: int) -> int:
    """Float32 from one slot's start to the next's: `numel` rounded up to ALIGN."""
    return -(-numel // ALIGN) * ALIGN


class Slots:
    """The owner's side: `count` slots of `numel` float32 in one shared-memory segment named `name`."""

    def __init__(self, name: str, numel: int, count: int):
        self.name, self.numel, self.count = name, numel, count
        self.stride = _stride(numel)
        self.segment = Segment(name, max(4, self.stride * count * 4))
        self.free = list(range(count - 1, -1, -1))

    @classmethod
    def create(cls, name: str, numel: int, wanted: int) -> Optional["Slots"]:
        """Up to `wanted` slots, as many as fit in the room allowed; None if not one does (or no segment can be
        made here): the caller then uses the object store."""
        stride_bytes = _stride(numel) * 4
        remove_orphans()  # what dead runs left: their room is ours again
        count = min(wanted, shm_room() // max(1, stride_bytes))
        if count < 1:
            return None
        try:
            return cls(name, numel, count)
        except OSError:
            return None

    @property
    def array(self) -> np.ndarray:
        return self.segment.array

    def slot(self, index: int) -> Slot:
        return Slot(self.name, index, self.numel, self.stride)

    def view(self, index: int) -> np.ndarray:
        return self.slot(index).view(self.segment.array)

    def store(self, array: np.ndarray) -> Optional[Slot]:
        """A copy of `array` in a free slot, or None when all are taken."""
        if not self.free:
            return None
        index = self.free.pop()
        np.copyto(self.view(index), array.reshape(-1), casting="no")
        return self.slot(index)

    def release(self, slot: Slot) -> None:
        if slot.segment == self.name and slot.index not in self.free:
            self.free.append(slot.index)

    def close(self) -> None:
        """Unlink the segment: its memory goes once every process has let go of it."""
        self.segment.unlink()


class Attached:
    """A reader's side: segments opened by name, once each (their owner unlinks them)."""

    def __init__(self):
        self.segments: dict[str, Segment] = {}
        self.owners: dict = {}  # writer -> its segment, for `view_of`

    def view(self, slot: Slot) -> np.ndarray:
        """The array in `slot`, in place. Raises FileNotFoundError when its segment is gone (its owner died)."""
        segment = self.segments.get(slot.segment)
        if segment is None:
            segment = self.segments[slot.segment] = Segment(slot.segment)
        return slot.view(segment.array)

    def view_of(self, writer, slot: Slot) -> np.ndarray:
        """`view(slot)` for a slot of `writer` (a worker's gradients), which has one segment at a time: when a new
        one comes (the writer restarted), the segment before it is let go."""
        if self.owners.get(writer) != slot.segment:
            self.owners[writer] = slot.segment
            self.forget_except(set(self.owners.values()))
        return self.view(slot)

    def forget_except(self, keep: set[str]) -> None:
        """Let go of the segments not named in `keep` (those of owners that have been replaced); each is
        unmapped once no array over it is left."""
        for name in [n for n in self.segments if n not in keep]:
            del self.segments[name]


class VersionStore:
    """The server's weight versions: each in a free slot of a segment named `name` (made at the first put, with
    up to `wanted` slots), else through `put`/`get` (the object store, in the actor). `drop` frees a version's
    slot; `off_node` is a handle a worker on another node can read: a slot's version put through `put` once,
    on demand."""

    def __init__(self, name: str, wanted: int, put, get):
        self.name, self.wanted, self._put, self._get = name, wanted, put, get
        self.slots: Optional[Slots] = None
        self.tried = False
        self._off_node: dict[Slot, object] = {}

    def put(self, array: np.ndarray):
        if not self.tried:
            self.tried = True
            self.slots = Slots.create(self.name, array.size, self.wanted)
        slot = self.slots.store(array) if self.slots is not None else None
        return slot if slot is not None else self._put(array)

    def get(self, handle) -> np.ndarray:
        return self.slots.view(handle.index) if isinstance(handle, Slot) else self._get(handle)

    def drop(self, handle) -> None:
        if isinstance(handle, Slot):
            self.slots.release(handle)
            self._off_node.pop(handle, None)

    def off_node(self, handle):
        if not isinstance(handle, Slot):
            return handle
        if handle not in self._off_node:
            self._off_node[handle] = self._put(self.get(handle))
        return self._off_node[handle]

    def close(self) -> None:
        self._off_node.clear()
        if self.slots is not None:
            self.slots.close()
