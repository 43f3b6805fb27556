"""Loaded maps as objects (probe.bpf.objects.Map): lookup, update, key walks and batched reads."""
import errno
import os
import struct

import pytest

from probe.bpf import constants, objects, syscall
from probe.errors import KernelError, ProbeError

pytestmark = pytest.mark.integration


@pytest.fixture
def new_map():
    """A factory of maps made with BPF_MAP_CREATE, closed after the test."""
    fds = []

    def make(map_type, key_size, value_size, max_entries, name=b"knp_test"):
        fd = syscall.map_create(syscall.MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                                                      max_entries=max_entries, map_name=name))
        fds.append(fd)
        return objects.Map(fd)

    yield make
    for fd in fds:
        os.close(fd)


def test_map_describes_itself_from_the_kernel(new_map):
    m = new_map(constants.BPF_MAP_TYPE_HASH, 4, 12, 10)
    assert (m.name, m.type, m.key_size, m.value_size, m.max_entries, m.ncpus) == ("knp_test", 1, 4, 12, 10, 0)
    assert m.id > 0


def test_hash_lookup_update_and_missing_key(new_map):
    m = new_map(constants.BPF_MAP_TYPE_HASH, 4, 12, 10)
    m.update(struct.pack("=I", 7), b"abcdefghijkl")
    assert m.lookup(struct.pack("=I", 7)) == b"abcdefghijkl"
    with pytest.raises(KernelError) as missing:
        m.lookup(struct.pack("=I", 8))
    assert missing.value.errno == errno.ENOENT


def test_wrong_key_size_is_refused_before_the_kernel_reads_it(new_map):
    m = new_map(constants.BPF_MAP_TYPE_HASH, 8, 8, 4)
    with pytest.raises(ProbeError) as short:
        m.lookup(b"\0" * 4)
    assert "key of 4 bytes, expected 8" in short.value.message


def test_percpu_values_are_one_per_possible_cpu(new_map):
    """A per-CPU value of 12 bytes comes back as one 12-byte value per CPU, not the kernel's padded slots."""
    m = new_map(constants.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 12, 2)
    assert m.ncpus == objects.possible_cpus() >= 1
    values = [struct.pack("=IQ", cpu, cpu * 1000) for cpu in range(m.ncpus)]
    m.update(struct.pack("=I", 1), values)
    assert m.lookup(struct.pack("=I", 1)) == values
    assert m.lookup(struct.pack("=I", 0)) == [bytes(12)] * m.ncpus


def filled(new_map, map_type, count):
    m = new_map(map_type, 4, 8, count + 10)
    for i in range(count):
        m.update(struct.pack("=I", i), struct.pack("=Q", i * i))
    return m


@pytest.mark.parametrize("map_type", [constants.BPF_MAP_TYPE_HASH, constants.BPF_MAP_TYPE_ARRAY])
def test_keys_walk_every_entry(new_map, map_type):
    m = filled(new_map, map_type, 300)
    keys = sorted(struct.unpack("=I", k)[0] for k in m.keys())
    assert keys == list(range(300 if map_type == constants.BPF_MAP_TYPE_HASH else 310))


@pytest.mark.parametrize("map_type", [constants.BPF_MAP_TYPE_HASH, constants.BPF_MAP_TYPE_ARRAY])
def test_items_batched_and_one_by_one_agree(new_map, map_type, monkeypatch):
    """600 entries: more than one batch; the same entries with batched lookups as without."""
    m = filled(new_map, map_type, 600)
    calls = []
    batch = syscall.map_lookup_batch
    monkeypatch.setattr(syscall, "map_lookup_batch", lambda *a: calls.append(a) or batch(*a))
    batched = sorted(m.items())
    assert calls, "the kernel has BPF_MAP_LOOKUP_BATCH (5.6+): it must be used"
    m._batch = False
    single = sorted(m.items())
    assert batched == single
    expected = {struct.pack("=I", i): struct.pack("=Q", i * i) for i in range(600)}
    assert {k: v for k, v in batched if k in expected} == expected


def test_items_fall_back_where_the_kernel_has_no_batch(new_map, monkeypatch):
    """EINVAL from BPF_MAP_LOOKUP_BATCH (a kernel before 5.6) means a lookup per key, remembered."""
    m = filled(new_map, constants.BPF_MAP_TYPE_HASH, 5)
    refusals = []

    def no_batch(*args):
        refusals.append(args)
        raise KernelError("BPF_MAP_LOOKUP_BATCH: Invalid argument", errno=errno.EINVAL)

    monkeypatch.setattr(syscall, "map_lookup_batch", no_batch)
    assert sorted(m.items()) == sorted((struct.pack("=I", i), struct.pack("=Q", i * i)) for i in range(5))
    assert sorted(m.items()) == sorted((struct.pack("=I", i), struct.pack("=Q", i * i)) for i in range(5))
    assert len(refusals) == 1


def test_batch_reads_percpu_values(new_map):
    m = new_map(constants.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 4, 3)
    m.update(struct.pack("=I", 2), [struct.pack("=I", 5 + cpu) for cpu in range(m.ncpus)])
    items = dict(m.items())
    assert items[struct.pack("=I", 2)] == [struct.pack("=I", 5 + cpu) for cpu in range(m.ncpus)]
    assert items[struct.pack("=I", 0)] == [bytes(4)] * m.ncpus


def test_lookup_many_reads_runs_of_an_array_in_batches(new_map, monkeypatch):
    """Keys 0, 3, 5 (one run: gaps of at most 8), 300 to 599 (a run of two batches), 1000 (alone): each wanted
    value, nothing else; a batched walk per 256 entries of a run, none of them past its run."""
    m = filled(new_map, constants.BPF_MAP_TYPE_ARRAY, 1100)
    calls = []
    batch = syscall.map_lookup_batch
    monkeypatch.setattr(syscall, "map_lookup_batch", lambda *a: calls.append(a) or batch(*a))
    indexes = [0, 3, 5] + list(range(300, 600)) + [1000]
    keys = [struct.pack("=I", i) for i in indexes]
    assert m.lookup_many(keys) == {k: struct.pack("=Q", i * i) for k, i in zip(keys, indexes)}
    walks = [(None if a[4] is None else struct.unpack("=I", a[4])[0], a[5]) for a in calls]
    assert walks == [(None, 6), (299, 300), (999, 1)]  # (the key before the run, the run's span)
    calls.clear()
    m._batch = False
    assert m.lookup_many(keys[:3]) == {k: struct.pack("=Q", i * i) for k, i in zip(keys, indexes[:3])}
    assert calls == []


def test_lookup_many_falls_back_to_a_lookup_per_key(new_map, monkeypatch):
    """Without BPF_MAP_LOOKUP_BATCH (before 5.6): a lookup per key, per-CPU values whole, remembered."""
    m = new_map(constants.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 4, 10)
    m.update(struct.pack("=I", 7), [struct.pack("=I", 5 + cpu) for cpu in range(m.ncpus)])
    refusals = []

    def no_batch(*args):
        refusals.append(args)
        raise KernelError("BPF_MAP_LOOKUP_BATCH: Invalid argument", errno=errno.EINVAL)

    monkeypatch.setattr(syscall, "map_lookup_batch", no_batch)
    for _ in range(2):
        assert m.lookup_many([struct.pack("=I", 7), struct.pack("=I", 1)]) == {
            struct.pack("=I", 7): [struct.pack("=I", 5 + cpu) for cpu in range(m.ncpus)],
            struct.pack("=I", 1): [bytes(4)] * m.ncpus}
    assert len(refusals) == 1
