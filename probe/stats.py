"""The stats map in the kernel: the keys of the interfaces the probe follows, made before a program counts there
and deleted after it, and the counters read under them."""
import errno
import time

from probe import layout
from probe.bpf.constants import BPF_ANY, BPF_NOEXIST
from probe.errors import KernelError


# A map without preallocation takes its elements from per-CPU caches the kernel refills in the background
# (bpf_mem_alloc, 6.1+): many inserts in a row can find them empty for a moment (ENOMEM). Tries, a pause.
_ENOMEM_TRIES = 50
_ENOMEM_PAUSE = 0.002


def _update(stats_map, key, value, flags):
    for attempt in range(_ENOMEM_TRIES):
        try:
            return stats_map.update(key, value, flags)
        except KernelError as e:
            if e.errno != errno.ENOMEM or attempt == _ENOMEM_TRIES - 1:
                raise
            time.sleep(_ENOMEM_PAUSE)


def add_keys(stats_map, ifindex, reset=True):
    """Make an interface's keys (both directions), zeroed, so that the programs count it; reset=False keeps
    the keys already there, with their counters."""
    zero = [bytes(layout.STATS.size)] * stats_map.ncpus
    for direction in layout.DIRECTIONS:
        try:
            _update(stats_map, layout.key(ifindex, direction), zero, BPF_ANY if reset else BPF_NOEXIST)
        except KernelError as e:
            if e.errno == errno.EEXIST and not reset:
                continue
            if e.errno == errno.E2BIG:
                raise KernelError("the stats map is full: it counts %d interfaces at most" % layout.MAX_INTERFACES,
                                  hint="let some go, or build the object with a larger KNP_MAX_INTERFACES",
                                  errno=e.errno) from e
            raise


def delete_keys(stats_map, ifindex):
    """Delete an interface's keys, those still there: an interface that gets its ifindex next starts at zero."""
    for direction in layout.DIRECTIONS:
        try:
            stats_map.delete(layout.key(ifindex, direction))
        except KernelError as e:
            if e.errno != errno.ENOENT:
                raise


def read(stats_map, ifindex, direction):
    """Cumulative counters of an interface's direction, summed over CPUs."""
    return layout.decode_stats(stats_map.lookup(layout.key(ifindex, direction)))


def read_all(stats_map, wanted):
    """{(ifindex, direction): counters} of each (ifindex, direction) wanted, from one walk of the map (batched
    where the kernel has it) rather than a lookup per key."""
    values = dict(stats_map.items())
    counted = {}
    for ifindex, direction in wanted:
        raw = values.get(layout.key(ifindex, direction))
        if raw is None:
            raise KernelError("the stats map has no key for ifindex %d %s" % (ifindex, direction),
                              errno=errno.ENOENT)
        counted[ifindex, direction] = layout.decode_stats(raw)
    return counted
