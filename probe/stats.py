"""The maps in the kernel: a slot per interface the probe follows (knp_slots, ifindex -> slot), given before a
program counts there and taken back after, and the counters of each slot's directions (knp_stats)."""
import errno

from probe import layout
from probe.errors import KernelError

NOT_FOLLOWED = 0  # knp_slots' value for an interface the probe does not follow


def _check_ifindex(ifindex):
    if not 0 < ifindex < layout.MAX_IFINDEX:
        raise KernelError("ifindex %d is beyond the %d the slots map has room for" % (ifindex, layout.MAX_IFINDEX),
                          hint="ifindexes grow with every interface made: raise KNP_MAX_IFINDEX (bpf/kubenetprobe.h) "
                               "and MAX_IFINDEX (probe/layout.py) together and rebuild",
                          errno=errno.E2BIG)


def slot_of(slots_map, ifindex):
    """The slot knp_slots gives an interface, 0 where it is not followed (or beyond the map)."""
    if not 0 < ifindex < layout.MAX_IFINDEX:
        return NOT_FOLLOWED
    return layout.SLOT.unpack(slots_map.lookup(layout.SLOT.pack(ifindex)))[0]


def unfollow(slots_map, ifindex):
    """knp_slots[ifindex] = 0: the programs stop counting the interface (its slot's counters stay until the slot
    is given again, zeroed then)."""
    if 0 < ifindex < layout.MAX_IFINDEX:
        slots_map.update(layout.SLOT.pack(ifindex), layout.SLOT.pack(NOT_FOLLOWED))


class Slots(object):
    """The slots of one pair of maps, as this process gives them out: {ifindex: slot} of the interfaces it follows,
    or knows to be followed (a previous run's pinned ones, adopt())."""

    def __init__(self, slots_map, stats_map, other_map=None):
        self.slots_map = slots_map
        self.stats_map = stats_map
        self.other_map = other_map  # the talkers' `other` counters (knp_peer_other), zeroed with a slot's stats
        self.given = {}  # ifindex -> slot
        self._used = set()  # the slots of given
        self._low = 1  # no slot below it is free

    @classmethod
    def of(cls, obj, talkers=False):
        """The slots of a loaded object's maps; with talkers, their `other` counters too."""
        return cls(obj.map(layout.SLOTS_MAP), obj.map(layout.STATS_MAP),
                   obj.map(layout.PEER_OTHER_MAP) if talkers else None)

    def _hold(self, ifindex, slot):
        self.given[ifindex] = slot
        self._used.add(slot)

    def _can_hold(self, slot):
        return 0 < slot <= layout.MAX_INTERFACES and slot not in self._used

    def _take(self):
        """The lowest free slot."""
        while self._low <= layout.MAX_INTERFACES:
            if self._low not in self._used:
                return self._low
            self._low += 1
        raise KernelError("the stats map is full: it counts %d interfaces at most" % layout.MAX_INTERFACES,
                          hint="let some go, or build the object with a larger KNP_MAX_INTERFACES", errno=errno.E2BIG)

    def _zero(self, slot):
        zero = [bytes(layout.STATS.size)] * self.stats_map.ncpus
        for direction in layout.DIRECTIONS:
            self.stats_map.update(layout.key(slot, direction), zero)
        if self.other_map is not None:
            zero = [bytes(layout.COUNTER.size)] * self.other_map.ncpus
            for direction in layout.DIRECTIONS:
                self.other_map.update(layout.key(slot, direction), zero)

    def add(self, ifindex, reset=True):
        """Follow an interface: a free slot, its counters zeroed (every CPU), then knp_slots[ifindex] = slot, so
        that the programs count it. reset=False (a take-over) keeps the slot knp_slots already gives the
        interface, with its counters, where it has one no other interface holds here."""
        _check_ifindex(ifindex)
        if ifindex in self.given:
            slot = self.given[ifindex]
            if reset:
                self._zero(slot)
            return slot
        if not reset:
            slot = slot_of(self.slots_map, ifindex)
            if self._can_hold(slot):
                self._hold(ifindex, slot)
                return slot
        slot = self._take()
        self._zero(slot)
        self.slots_map.update(layout.SLOT.pack(ifindex), layout.SLOT.pack(slot))
        self._hold(ifindex, slot)
        return slot

    def rebuild(self, existing):
        """Hold what knp_slots gives (maps a previous run pinned), from one walk of it, so that no slot is given
        twice: the slot of each ifindex in `existing` (the interfaces still there, counting on), untouched; an
        ifindex no longer there (its interface gone, and its hooks with it), or a slot held already, is set to 0."""
        zero = layout.SLOT.pack(NOT_FOLLOWED)
        for key, value in self.slots_map.items():
            if value == zero:
                continue
            ifindex, slot = layout.SLOT.unpack(key)[0], layout.SLOT.unpack(value)[0]
            if ifindex in existing and ifindex not in self.given and self._can_hold(slot):
                self._hold(ifindex, slot)
            else:
                unfollow(self.slots_map, ifindex)

    def remove(self, ifindex):
        """Stop following an interface: knp_slots[ifindex] = 0 first, then its slot is free again."""
        unfollow(self.slots_map, ifindex)
        slot = self.given.pop(ifindex, None)
        if slot is not None:
            self._used.discard(slot)
            self._low = min(self._low, slot)

    def read(self, ifindex, direction):
        """Cumulative counters of a followed interface's direction, summed over CPUs."""
        return self.read_all([(ifindex, direction)])[ifindex, direction]

    def read_all(self, wanted):
        """{(ifindex, direction): counters} of each (ifindex, direction) wanted, read in batched lookups of the
        slots' entries (a walk of the whole per-CPU array would read every CPU's copy of every slot)."""
        keys = {}
        for ifindex, direction in wanted:
            slot = self.given.get(ifindex)
            if slot is None:
                raise KernelError("ifindex %d has no slot" % ifindex, errno=errno.ENOENT)
            keys[ifindex, direction] = layout.key(slot, direction)
        values = self.stats_map.lookup_many(keys.values())
        return {wanted: layout.decode_stats(values[key]) for wanted, key in keys.items()}
