"""Loaded objects: the maps and programs an engine put into the kernel, as Map and Program objects."""
import errno
import os
import struct

from probe.bpf import syscall
from probe.bpf.constants import BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, PERCPU_MAP_TYPES
from probe.errors import KernelError, ProbeError

_BATCH_SIZE = 256
# Errors that say "no batched lookup here": before 5.6, or for this map type.
_NO_BATCH = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524)  # 524: the kernel's ENOTSUPP
_possible_cpus = None
_INDEX = struct.Struct("=I")  # an array's key
# Keys of an array this close together are read in one batched walk, the entries between them with them:
# reading a few unwanted entries costs less than another system call.
_RUN_GAP = 8


def possible_cpus(path="/sys/devices/system/cpu/possible"):
    """Number of possible CPUs: how many values a per-CPU map holds per key."""
    with open(path) as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def ncpus():
    """possible_cpus() of this machine, read once."""
    global _possible_cpus
    if _possible_cpus is None:
        _possible_cpus = possible_cpus()
    return _possible_cpus


class Map(object):
    """A map in the kernel, described by the kernel itself; its fd belongs to whoever opened it.

    Values are bytes; a per-CPU map's value is a list of bytes, one per possible CPU.
    """

    def __init__(self, fd, name=None):
        info = syscall.map_info(fd)
        self.fd = fd
        self.id = info.id
        self.name = name or info.name.decode("ascii", "replace")
        self.type = info.type
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.flags = info.map_flags
        self.ncpus = ncpus() if self.type in PERCPU_MAP_TYPES else 0
        # The kernel hands a per-CPU value over as one slot per CPU, each padded to 8 bytes.
        self._stride = (self.value_size + 7) & ~7
        self._batch = True  # until the kernel says it has no batched lookup for this map

    def __repr__(self):
        return "Map(%r, id=%d, type=%d, key_size=%d, value_size=%d, max_entries=%d)" % (
            self.name, self.id, self.type, self.key_size, self.value_size, self.max_entries)

    @property
    def _raw_size(self):
        return self._stride * self.ncpus if self.ncpus else self.value_size

    def _value(self, raw):
        if not self.ncpus:
            return raw
        return [raw[cpu * self._stride:cpu * self._stride + self.value_size] for cpu in range(self.ncpus)]

    def _key(self, key):
        if len(key) != self.key_size:
            raise ProbeError("map %s: key of %d bytes, expected %d" % (self.name, len(key), self.key_size))
        return key

    def lookup(self, key):
        """The value under `key`; KernelError (ENOENT) where there is none."""
        return self._value(syscall.map_lookup(self.fd, self._key(key), self._raw_size))

    def update(self, key, value, flags=0):
        """Store bytes under `key` (a per-CPU map takes a list of one value per CPU); flags: BPF_ANY (0), or
        BPF_NOEXIST to refuse (EEXIST) a key already there."""
        if self.ncpus:
            value = b"".join(v.ljust(self._stride, b"\0") for v in value)
        syscall.map_update(self.fd, self._key(key), value, flags)

    def delete(self, key):
        """Delete the entry under `key`; KernelError (ENOENT) where there is none."""
        syscall.map_delete(self.fd, self._key(key))

    def keys(self):
        """Every key, walked with BPF_MAP_GET_NEXT_KEY."""
        key = syscall.map_next_key(self.fd, None, self.key_size)
        while key is not None:
            yield key
            key = syscall.map_next_key(self.fd, key, self.key_size)

    def items(self):
        """[(key, value)] of every entry: one batched lookup per 256 entries where the kernel has it (5.6+),
        else a lookup per key."""
        return [(key, self._value(raw)) for key, raw in self._raw_items()]

    def nonzero_items(self):
        """items() but those whose value is all zero bytes (on every CPU), left out before they are split."""
        zero = bytes(self._raw_size)
        return [(key, self._value(raw)) for key, raw in self._raw_items() if raw != zero]

    def _raw_items(self):
        if self._batch:
            try:
                return syscall.map_lookup_batch(self.fd, self.key_size, self._raw_size,
                                                min(_BATCH_SIZE, self.max_entries or 1))
            except KernelError as e:
                if e.errno not in _NO_BATCH:
                    raise
                self._batch = False
        out = []
        for key in self.keys():
            try:
                out.append((key, syscall.map_lookup(self.fd, key, self._raw_size)))
            except KernelError as e:
                if e.errno != errno.ENOENT:  # deleted between the two calls
                    raise
        return out

    def lookup_many(self, keys):
        """{key: value} of these keys of an array: one batched lookup per run of nearby keys (of 256 entries at
        most) where the kernel has it (5.6+), else a lookup per key."""
        if self._batch and self.type in (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY):
            try:
                return self._lookup_runs(set(keys))
            except KernelError as e:
                if e.errno not in _NO_BATCH:
                    raise
                self._batch = False
        return {key: self.lookup(key) for key in keys}

    def _lookup_runs(self, wanted):
        found = {}
        indexes = sorted(_INDEX.unpack(self._key(key))[0] for key in wanted)
        first = 0
        for i, index in enumerate(indexes):
            if i + 1 < len(indexes) and indexes[i + 1] - index <= _RUN_GAP:
                continue  # the run goes on
            start, span = indexes[first], index - indexes[first] + 1
            after = _INDEX.pack(start - 1) if start else None
            for key, raw in syscall.map_lookup_batch(self.fd, self.key_size, self._raw_size,
                                                     min(_BATCH_SIZE, span), after, span):
                if key in wanted:
                    found[key] = self._value(raw)
            first = i + 1
        return found


class Program(object):
    """A program in the kernel; its fd belongs to whoever opened it."""

    def __init__(self, fd, name):
        self.fd = fd
        self.name = name

    def __repr__(self):
        return "Program(%r, fd=%d)" % (self.name, self.fd)

    def info(self):
        """The kernel's struct bpf_prog_info of the program (id, tag, type...)."""
        return syscall.prog_info(self.fd)

    @property
    def id(self):
        return self.info().id

    def test_run(self, frame, repeat=1):
        """BPF_PROG_TEST_RUN: (return value, mean ns) of the program run on one frame."""
        return syscall.prog_test_run(self.fd, frame, repeat)


class LoadedObject(object):
    """Programs and maps of one object, loaded into the kernel; closing releases them, and unpins the maps
    this load pinned (declared with pinning by name) unless keep_pins is set."""

    def __init__(self, programs, maps, pins=()):
        self.programs = {name: Program(fd, name) for name, fd in programs.items()}
        self.maps = {name: Map(fd, name) for name, fd in maps.items()}
        self.pins = list(pins)  # paths of the pins this load made; pins it reused are not its own
        self.keep_pins = False

    def program(self, name):
        """A loaded program, by name."""
        try:
            return self.programs[name]
        except KeyError:
            raise ProbeError("the object has no program %r (it has: %s)" % (name, ", ".join(sorted(self.programs))))

    def map(self, name):
        """A map, by name."""
        try:
            return self.maps[name]
        except KeyError:
            raise ProbeError("the object has no map %r (it has: %s)" % (name, ", ".join(sorted(self.maps))))

    def close(self):
        """Release the programs and maps (attached links keep their program alive) and the pins made."""
        self._release()
        pins, self.pins = self.pins, []
        self.programs, self.maps = {}, {}
        for path in pins if not self.keep_pins else ():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _release(self):
        """Close what the engine opened."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
