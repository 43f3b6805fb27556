"""Attach lifecycle and counters: the probe on a set of interfaces, reloads, pinned state."""
import errno
import os

from probe import layout, stats, talkers as peers
from probe.attach import tc, xdp
from probe.bpf import log, syscall
from probe.bpf.engine import open_engine
from probe.bpf.pin import ensure_bpffs
from probe.bytecode import embedded_object
from probe.errors import KernelError, ObjectError, ProbeError
from probe.net import interfaces
from probe.net import link as netlink
from probe.pins import PinRoot

HOOKS = ("auto", "xdp", "tc")
# Interfaces whose rx auto counts at TC ingress: on a veth, native XDP converts every skb, costing more than
# TC (and than generic XDP).
_TC_KINDS = ("veth", "netkit")
# The kernel's words for "no native XDP in this driver", from a native attach.
_NO_NATIVE_XDP = (errno.EOPNOTSUPP, errno.EINVAL)


# What layout.py reads in each map.
_LAYOUTS = {
    layout.STATS_MAP: {"type": layout.STATS_MAP_TYPE, "flags": 0, "key_size": layout.KEY.size,
                       "value_size": layout.STATS.size, "max_entries": layout.MAX_ENTRIES},
    layout.SLOTS_MAP: {"type": layout.SLOTS_MAP_TYPE, "flags": 0, "key_size": layout.SLOT.size,
                       "value_size": layout.SLOT.size, "max_entries": layout.MAX_IFINDEX},
    layout.PEER_CONF_MAP: {"type": layout.SLOTS_MAP_TYPE, "flags": 0, "key_size": layout.SLOT.size,
                           "value_size": layout.PEER_CONF.size, "max_entries": 1},
    # The others' capacity is set at load (--talkers-capacity).
    layout.PEER_OTHER_MAP: {"type": layout.PEER_OTHER_TYPE, "flags": 0, "key_size": layout.KEY.size,
                            "value_size": layout.COUNTER.size},
    layout.PEER_BASE_MAP: {"type": layout.PEER_BASE_TYPE, "flags": layout.PEER_BASE_FLAGS,
                           "key_size": layout.PEER_KEY.size, "value_size": layout.COUNTER.size},
}
for _name in layout.PEER_TABLES:
    _LAYOUTS[_name] = {"type": layout.PEER_TABLE_TYPE, "flags": 0, "key_size": layout.SLOT.size,
                       "value_size": layout.PEER.size}


def _check_layout(name, found):
    """Refuse a map `name` (a MapSpec, or a Map in the kernel) other than the one layout.py reads."""
    differs = ["%s %d, not %d" % (field, getattr(found, field), value)
               for field, value in sorted(_LAYOUTS[name].items()) if getattr(found, field) != value]
    if differs:
        raise ObjectError("the object's map %s has another layout: %s" % (name, "; ".join(differs)),
                         hint="rebuild the object from this version's bpf/ (make build-ebpf)")


def check_stats_map(obj, names=layout.MAPS):
    """Refuse a loaded object whose maps (stats and slots, and those `names` adds) are not the ones layout.py
    reads, naming what differs."""
    for name in names:
        _check_layout(name, obj.map(name))


def check_object(data):
    """Refuse, before loading, an object without the probe's program and stats map, or with another layout."""
    from probe.bpf.spec import read_object  # only objects from files pay for the ELF and BTF readers
    spec = read_object(data)
    programs = sorted(set(layout.PROGRAMS.values()))
    for kind, names, found in [("program", programs, spec.programs)] + [("map", [m], spec.maps) for m in layout.MAPS]:
        if not set(names) & set(found):
            raise ObjectError("the object has no %s %s (it has: %s)" % (kind, " or ".join(names),
                                                                     ", ".join(sorted(found)) or "none"),
                              hint="build it from this version's bpf/ (make build-ebpf)")
        if kind == "map":  # the stats map first: an older version's object has no slots map, and this says more
            _check_layout(names[0], found[names[0]])


class ObjectSource(object):
    """Where the program comes from: the embedded object, or a file, read again at every reload."""

    def __init__(self, path=None):
        self.path = path

    def read(self):
        """The object's bytes, checked: the embedded one against its SHA-256, a file against layout.py."""
        if self.path is None:
            return embedded_object()
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except (IOError, OSError) as e:
            raise ProbeError("cannot read it: %s" % e.strerror, errno=e.errno)
        check_object(data)
        return data

    def __str__(self):
        return self.path or "the embedded object"


def _program(obj, direction, hook, talkers=False):
    """The program of the object that counts `direction` at `hook` (and peers, with talkers)."""
    return obj.program((layout.PEER_PROGRAMS if talkers else layout.PROGRAMS)[direction, hook])


class Attachment(object):
    """The probe on one interface: a hook per direction, running the monitor's programs, which count in the
    interface's slot of the monitor's stats map."""

    def __init__(self, monitor, hooks, pins=None):
        self.monitor = monitor
        self.hooks = hooks  # {direction: an attachment of probe.attach.xdp or probe.attach.tc}
        self.pins = pins  # a PinDir when the state outlives the probe
        first = next(iter(hooks.values()))
        self.interface = first.interface
        self.ifindex = first.ifindex
        self.reloads = 0

    def rename(self, name):
        """Follow the interface under its new name (the kernel knows it by its index)."""
        self.interface = name
        for hook in self.hooks.values():
            hook.interface = name

    def counters(self, direction="rx"):
        """Cumulative counters of one direction since attach."""
        return self.monitor.slots.read(self.ifindex, direction)

    def replace_programs(self, obj):
        """Swap in the programs of `obj`, loaded onto the same stats map; the kernel frees the old ones."""
        for direction, hook in sorted(self.hooks.items()):
            hook.update(_program(obj, direction, hook.hook, self.monitor.talkers is not None).fd)

    def close(self, end=False):
        """Detach and take the interface's slot back; if pinned, only let go of the hooks, which go on counting,
        unless `end`: then the pins go first."""
        keep = self.pins is not None and not end
        try:
            if self.pins is not None and end:
                self.pins.release()
            # Last attached, first closed: the hook whose attaching added the clsact qdisc deletes it only once
            # no filter is left, so it must close after the other.
            for hook in reversed(list(self.hooks.values())):
                hook.close(keep=keep)
        finally:
            if not keep:
                slot = self.monitor.slots.given.get(self.ifindex)
                self.monitor.slots.remove(self.ifindex)
                if self.monitor.talkers is not None and slot is not None:
                    self.monitor.talkers.forget(self.ifindex, slot)


class NetworkMonitor(object):
    """Counts the packets of interfaces: attach() them, read packet_stats(), close() to detach all.

    One object serves every interface: loaded at the first attach, its programs attached to each, counting into
    its one stats map, each interface in its own slot.
    """

    def __init__(self, engine=None, object_path=None, loader="auto", pin_dir=None, talkers=0,
                 talkers_capacity=layout.PEERS_DEFAULT):
        """talkers: the top peers (by bytes in the last interval) talker_stats() gives per interface direction,
        counted by the programs that count peers too, in tables of talkers_capacity peers; 0: the plain
        programs, no peers counted."""
        self.engine = engine or open_engine(loader)
        self.talkers_top = talkers
        self.talkers_capacity = talkers_capacity if talkers else 0
        self.talkers = None  # the peer tables (probe.talkers.Talkers) of the object, with talkers_capacity
        self.source = ObjectSource(object_path)
        self.pins = PinRoot(pin_dir) if pin_dir else None
        if pin_dir:
            ensure_bpffs(pin_dir)  # before anything is loaded or attached
        self.object = None  # until the first attach
        self.slots = None  # the slots of the object's maps, given out to the interfaces followed
        self.attachments = []

    @property
    def stats_map(self):
        """The map every interface counts into, of the object loaded at the first attach."""
        return self.object.map(layout.STATS_MAP)

    @property
    def slots_map(self):
        """ifindex -> slot, of the object loaded at the first attach."""
        return self.object.map(layout.SLOTS_MAP)

    def attach(self, interface, mode="auto", force=False, method="auto", hook="auto", directions=("rx", "tx")):
        """Attach the programs (loaded at the first attach) to an interface; returns the Attachment.

        directions: what to count, "rx" and/or "tx". tx is always counted at TC egress. hook says where rx is
        counted: "xdp", "tc" (ingress), or "auto": native XDP where the driver has it, the interface is no
        veth and no other XDP program is attached, else TC. mode ("native", "generic", "auto") is XDP's, and
        asking for native or generic means XDP; method: "link", "netlink" or "auto", at either hook.
        """
        if any(a.interface == interface for a in self.attachments):
            raise ProbeError("%s is named twice" % interface)
        if hook not in HOOKS:
            raise ProbeError("unknown hook %r" % hook, hint="use one of %s" % ", ".join(HOOKS))
        index = interfaces.ifindex(interface)  # a typo fails here, before anything is loaded
        obj = self._loaded()
        pins = self.pins.interface(interface) if self.pins else None
        if pins and pins.exists():
            attachment = self._take_over(interface, index, pins)
        else:
            self.slots.add(index)  # before any hook: the programs count only in an interface's slot
            try:
                hooks = self._attach_hooks(obj, interface, index, directions, hook, mode, force, method)
            except BaseException:
                self.slots.remove(index)
                raise
            attachment = Attachment(self, hooks, pins)
            if pins:
                self._pin(attachment)
        self.attachments.append(attachment)
        return attachment

    def _attach_hooks(self, obj, interface, index, directions, hook, mode, force, method):
        """{direction: attachment}, every direction attached or none."""
        talkers = self.talkers is not None
        hooks = {}
        try:
            for direction in layout.DIRECTIONS:
                if direction not in directions:
                    continue
                if direction == "tx":
                    hooks[direction] = tc.attach_tc(_program(obj, "tx", "tc", talkers).fd, interface, "egress",
                                                    layout.OWNER, method)
                else:
                    hooks[direction] = self._attach_rx(obj, interface, index, hook, mode, force, method)
        except BaseException:
            for attached in hooks.values():
                attached.close()
            raise
        return hooks

    def _attach_rx(self, obj, interface, index, hook, mode, force, method):
        """The rx attachment, at the hook asked for or, for "auto", the one that suits the interface."""
        talkers = self.talkers is not None
        if hook == "auto" and mode != "auto":
            hook = "xdp"
        if hook == "xdp":
            return xdp.attach_xdp(_program(obj, "rx", "xdp", talkers).fd, interface, mode, force, method)
        if hook == "auto":
            why = self._tc_rather_than_xdp(interface, index)
            if why is None:
                try:
                    return xdp.attach_xdp(_program(obj, "rx", "xdp", talkers).fd, interface, "native", force, method)
                except KernelError as e:
                    if e.errno not in _NO_NATIVE_XDP:
                        raise
                    why = "its driver has no native XDP"
            log.debug("%s: counting rx at TC ingress: %s", interface, why)
        return tc.attach_tc(_program(obj, "rx", "tc", talkers).fd, interface, "ingress", layout.OWNER, method)

    @staticmethod
    def _tc_rather_than_xdp(interface, index):
        """Why rx should be counted at TC rather than XDP on this interface, or None."""
        kind = netlink.link_kind(index)
        if kind in _TC_KINDS:
            return "it is a %s (XDP on a %s costs more than TC)" % (kind, kind)
        current = xdp.holder(index)
        if current is not None:
            return "its XDP hook holds another program, %s, left in place" % current
        return None

    def _loaded(self):
        """The monitor's object, loaded at the first call: onto the pinned maps where --pin has them, every slot
        knp_slots gives an interface still there held (a previous run's, counting on), so that none is given twice."""
        if self.object is None:
            if self.pins and self.pins.has_map():
                map_fds = self.pins.open_maps()
                try:
                    self.object = self._load(map_fds)
                finally:
                    for fd in map_fds.values():
                        os.close(fd)
                self.slots = stats.Slots.of(self.object, bool(self.talkers_capacity))
                self.slots.rebuild(interfaces.indexes())
            else:
                self.object = self._load()
                self.slots = stats.Slots.of(self.object, bool(self.talkers_capacity))
            if self.talkers_capacity:
                self.talkers = peers.Talkers(self.object, self.talkers_capacity, keep=self.pins is not None)
        return self.object

    def _load(self, map_fds=None):
        """Read and load the object (onto existing maps, {name: fd}, if given), its maps checked before any
        read."""
        try:
            data = self.source.read()
            sizes = peers.max_entries(self.talkers_capacity)
            if map_fds and layout.PEER_TABLES[0] in map_fds:  # the capacity a previous run chose
                self._check_capacity(map_fds)
                sizes = {name: syscall.map_info(map_fds[name]).max_entries for name in sizes}
            # Only the programs attached: those that count talkers, or the plain ones (each set costs a verification).
            wanted = layout.PEER_PROGRAMS if self.talkers_capacity else layout.PROGRAMS
            obj = self.engine.load_bytes(data, reuse_maps=map_fds or None, max_entries=sizes,
                                         programs=set(wanted.values()))
            try:
                check_stats_map(obj, self._map_names())  # before the first read: a larger value would overrun it
            except ProbeError:
                obj.close()
                raise
        except ProbeError as e:
            if self.source.path:
                raise e.wrap(self.source.path) from e
            raise
        return obj

    def _map_names(self):
        """The maps this monitor shares with a reload or the next run: the talkers' too where it counts them."""
        return layout.MAPS + (layout.PEER_MAPS if self.talkers_capacity else ())

    def _check_capacity(self, map_fds):
        """Refuse reused peer tables of another capacity than the one asked for: their counts cannot move to
        tables of another size."""
        entries = syscall.map_info(map_fds[layout.PEER_TABLES[0]]).max_entries
        if self.talkers_capacity and entries != peers.table_size(self.talkers_capacity):
            raise ProbeError("the peer tables pinned in %s keep %d peers, not the %d asked for" % (
                self.pins.path if self.pins else "the maps reused", entries // 2, self.talkers_capacity),
                hint="run with --talkers-capacity %d, or end the pinned state first (kubenetprobe detach)"
                     % (entries // 2))

    def _pin(self, attachment):
        """Pin the maps, unless pinned already, then the attachment's hooks."""
        try:
            unpinned = [name for name in self._map_names() if not self.pins.has(name)]
            if unpinned:
                self.pins.pin_maps({name: self.object.map(name).fd for name in unpinned})
            attachment.pins.pin({d: (h, _program(self.object, d, h.hook, self.talkers is not None).fd)
                                 for d, h in attachment.hooks.items()})
        except Exception:
            attachment.pins.remove()
            attachment.pins = None  # so closing detaches
            attachment.close()
            self.pins.unpin_map_if_unused()
            raise

    def _take_over(self, interface, index, pins):
        """Adopt the hooks a previous run left pinned, their counters in the pinned stats map kept; then swap in
        this run's programs."""
        # Kept, counts and all, where the maps are the ones pinned; given, zeroed, where they are new.
        self.slots.add(index, reset=False)
        hooks = {}
        try:
            for direction, (hook, path, is_link) in sorted(pins.hooks().items()):
                link_fd = syscall.obj_get(path) if is_link else None
                if hook == "xdp":
                    hooks[direction] = xdp.take_over(interface, layout.OWNER, link_fd)
                else:
                    hooks[direction] = tc.take_over(interface, "egress" if direction == "tx" else "ingress",
                                                    layout.OWNER, link_fd)
            if not hooks:
                raise ProbeError("the pinned state of %s in %s keeps no hook" % (interface, pins.path),
                                 hint="remove it with `kubenetprobe detach -i %s --pin DIR`" % interface)
        except BaseException:
            for attached in hooks.values():
                attached.close(keep=True)
            raise
        attachment = Attachment(self, hooks, pins)
        try:
            attachment.replace_programs(self.object)
        except ProbeError:
            attachment.close()
            raise
        log.info("%s: took over the programs pinned in %s", interface, pins.path)
        return attachment

    def reload(self):
        """Read the object again, load it onto the same maps and swap its programs in on every interface,
        counters kept. If it does not load, the running programs stay; an interface whose hooks refuse the swap
        keeps its old programs, counting on, and the first such refusal is raised once every other has swapped."""
        if self.object is None:
            return
        obj = self._load({name: self.object.map(name).fd for name in self._map_names()})
        self.object, old = obj, self.object
        self.slots.slots_map, self.slots.stats_map = obj.map(layout.SLOTS_MAP), obj.map(layout.STATS_MAP)
        if self.talkers is not None:
            self.slots.other_map = obj.map(layout.PEER_OTHER_MAP)
            self.talkers.bind(obj)
        refused = []
        for a in self.attachments:
            try:
                a.replace_programs(obj)
                a.reloads += 1
            except ProbeError as e:
                refused.append(e.wrap(a.interface))
        old.close()  # the programs some hooks still run stay loaded while attached
        if refused:
            raise refused[0]

    def packet_stats(self):
        """{interface: {direction: counters}} for every attached interface, cumulative since attach, read in one
        lookup per slot and direction."""
        if not self.attachments:
            return {}
        counted = self.slots.read_all([(a.ifindex, d) for a in self.attachments for d in a.hooks])
        return {a.interface: {d: counted[a.ifindex, d] for d in sorted(a.hooks)} for a in self.attachments}

    def count_talkers(self):
        """Take the peers' counts of the interval (probe.talkers.Talkers.cycle), where talkers are counted;
        returns the number of peers retired."""
        if self.talkers is None:
            return 0
        return self.talkers.cycle([(self.slots.given[a.ifindex], d) for a in self.attachments for d in a.hooks
                                if a.ifindex in self.slots.given])

    def talker_stats(self, attachment):
        """{direction: the top peers and other} of an attachment (probe.talkers.Talkers.top) as of the last
        Talkers.cycle(); None without talkers, or once the interface's slot is gone."""
        slot = self.slots.given.get(attachment.ifindex) if self.talkers is not None else None
        if slot is None:
            return None
        return {d: self.talkers.top(attachment.ifindex, slot, d, self.talkers_top) for d in sorted(attachment.hooks)}

    def detach(self, attachment):
        """Detach from one interface and forget it (a vanished one too: the kernel has taken its hooks): its
        slot taken back, its pins removed, and the maps' pins too once no interface is left pinned."""
        self.attachments.remove(attachment)
        attachment.close(end=True)
        if self.pins:
            self.pins.unpin_map_if_unused()

    def close(self):
        """Detach from every interface (if pinned, leave them counting) and release the object."""
        try:
            while self.attachments:
                self.attachments.pop().close()
        finally:
            if self.talkers is not None:
                self.talkers.close()
                self.talkers = None
            if self.object is not None:
                self.object.close()
                self.object = None
                self.slots = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
