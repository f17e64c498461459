"""Shared memory between the parameter server and the workers on its node (`abray.training.transport`): slots
reused only when free, the object store when there is no room, and what a dead owner left found by its name."""

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import torch

from abray.training import transport
from abray.training.flat import FlatLayout, flat_gradient
from abray.training.data import digits
from abray.training.models import build_model
from abray.training.transport import Attached, Slot, Slots, VersionStore, remove_orphans, remove_segments


def name() -> str:
    return f"abray-test-{uuid.uuid4().hex[:8]}"


def exists(segment: str) -> bool:
    return os.path.exists(f"{transport.SHM_DIR}/{segment}")


def test_versions_live_in_slots_read_in_place_and_a_slot_is_reused_only_once_its_version_is_dropped():
    kept = []  # what the fallback (the object store, in the actor) holds

    def put(array):
        kept.append(array.copy())
        return len(kept) - 1

    store = VersionStore(name(), wanted=2, put=put, get=lambda i: kept[i])
    a, b, c = (np.full(1000, v, dtype=np.float32) for v in (1, 2, 3))
    try:
        ha, hb = store.put(a), store.put(b)
        assert isinstance(ha, Slot) and isinstance(hb, Slot) and ha.index != hb.index
        hc = store.put(c)  # no free slot: the fallback
        assert hc == 0 and np.array_equal(store.get(hc), c)
        reader = Attached()
        seen = reader.view(hb)  # a worker's view, in place
        assert np.array_equal(seen, b) and np.array_equal(store.get(ha), a)
        a[:] = 9  # the server's weights move on: the version stays what it was
        assert np.array_equal(store.get(ha), np.full(1000, 1, dtype=np.float32))
        store.drop(ha)
        hd = store.put(np.full(1000, 4, dtype=np.float32))
        assert hd.index == ha.index  # the freed slot, and only that one
        assert np.array_equal(seen, b)
        assert store.off_node(hd) == 1 and np.array_equal(kept[1], np.full(1000, 4))  # a copy for another node
        assert store.off_node(hd) == 1  # once
        reader.forget_except(set())
    finally:
        store.close()
    assert not exists(store.name)


def test_without_room_in_shared_memory_everything_goes_through_the_object_store(monkeypatch):
    monkeypatch.setattr(transport, "shm_room", lambda: 100)  # less than one slot
    assert Slots.create(name(), 1000, 4) is None
    store = VersionStore(name(), wanted=4, put=np.copy, get=lambda a: a)
    handle = store.put(np.ones(1000, dtype=np.float32))
    assert isinstance(handle, np.ndarray) and store.slots is None
    monkeypatch.setattr(transport, "shm_room", lambda: 2 * 4096 + 100)  # room for two slots of 1024 floats
    slots = Slots.create(name(), 1024, 5)
    try:
        assert slots.count == 2
    finally:
        slots.close()


def test_a_gradient_computed_into_shared_memory_is_the_one_computed_without():
    data = digits()
    torch.manual_seed(0)
    model = build_model("digits_cnn", data.num_classes).train()
    names = [n for n, _ in model.named_parameters()]
    layout = FlatLayout([p.shape for p in model.parameters()])
    weights = layout.flatten([p.detach() for p in model.parameters()]).numpy()
    work = {"indices": np.arange(32), "buffers": None}
    loss, plain = flat_gradient(model, names, layout, data.train, work, weights)
    slots = Slots(name(), layout.numel, 1)
    try:
        loss_out, written = flat_gradient(model, names, layout, data.train, work, weights, out=slots.view(0))
        assert loss_out == loss and np.array_equal(written, plain)
        assert np.shares_memory(written, slots.array)
    finally:
        slots.close()


def test_what_a_dead_owner_left_is_removed_by_its_prefix_and_nothing_else():
    run = name()
    dead = Slots(f"{run}-v-first", 1000, 2)  # its owner died without closing it
    other = Slots(f"{name()}-v-first", 1000, 1)  # another run's
    try:
        reader = Attached()
        seen = reader.view(dead.slot(0))
        assert remove_segments(f"{run}-v-") == 1
        assert not exists(dead.name) and exists(other.name)
        seen[:] = 1.0  # a mapping outlives its file: what still holds it reads and writes memory, not a hole
        with pytest.raises(FileNotFoundError):
            Attached().view(dead.slot(1))  # but nothing new can open it
    finally:
        other.close()
    assert not exists(other.name)


def test_segments_of_a_machine_together_stay_within_their_share_of_shared_memory(monkeypatch, tmp_path):
    capacity = 4 * 2**20  # a /dev/shm of 4 MiB, in a folder of its own: its free space is what segments leave
    monkeypatch.setattr(transport, "SHM_DIR", str(tmp_path))
    monkeypatch.setattr(transport, "free_bytes", lambda: capacity - sum(p.stat().st_size for p in tmp_path.iterdir()))
    made = []
    try:
        while (slots := Slots.create(name(), 1024, 100)) is not None:  # 4 KiB slots, 100 wanted each time
            made.append(slots)
            assert len(made) < 10
        sizes = [p.stat().st_size for p in tmp_path.iterdir()]
        # each takes what is left of the quarter: 100, 100, then the 56 slots left of the 256 that fit
        assert sizes and sum(sizes) <= capacity // 4 and [s.count for s in made] == [100, 100, 56]
    finally:
        for slots in made:
            slots.close()


def test_an_unlocked_segment_is_an_orphan_removed_by_the_next_maker_and_a_living_owners_stays(monkeypatch, tmp_path):
    monkeypatch.setattr(transport, "SHM_DIR", str(tmp_path))
    orphan, young = tmp_path / name(), tmp_path / name()
    orphan.write_bytes(b"\0" * 64)  # what an owner that died leaves: a file nobody holds a lock on
    young.touch()  # empty and new: an owner between making it and locking it
    alive = Slots(name(), 1000, 1)
    try:
        made = Slots.create(name(), 1000, 1)  # making a segment clears orphans first
        made.close()
        assert not orphan.exists() and young.exists() and exists(alive.name)
        os.utime(young, (time.time() - 3600,) * 2)  # an empty one that old was left by a maker that died
        assert remove_orphans() == 1 and not young.exists() and exists(alive.name)
    finally:
        alive.close()


@pytest.mark.slow
def test_the_segment_of_an_owner_killed_with_sigkill_is_removed_by_the_next_maker():
    segment = name()
    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from abray.training.transport import Slots\n"
        f"slots = Slots({segment!r}, 1000, 2)\n"
        "print('made', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "made"
        remove_orphans()
        assert exists(segment)  # its owner lives
        owner.send_signal(signal.SIGKILL)  # no handler runs: only the kernel lets go of the lock
        owner.wait(timeout=30)
        assert remove_orphans() >= 1 and not exists(segment)
    finally:
        owner.kill()
        remove_segments(segment)
