"""Attach lifecycle and counters: the probe on a set of interfaces, reloads, pinned state."""
import os

from probe import layout, log
from probe.attach import xdp
from probe.bpf.constants import BPF_MAP_TYPE_PERCPU_ARRAY
from probe.bpf.engine import open_engine
from probe.bpf.pin import ensure_bpffs
from probe.bytecode import embedded_object
from probe.errors import ObjectError, ProbeError
from probe.net import interfaces
from probe.pins import PinDir


def _check_layout(stats_map):
    """Refuse a stats map (a MapSpec, or the kernel's MapInfo) other than the one layout.py reads."""
    expected = {"type": BPF_MAP_TYPE_PERCPU_ARRAY, "key_size": layout.KEY.size,
                "value_size": layout.STATS.size, "max_entries": len(layout.DIRECTIONS)}
    differs = ["%s %d, not %d" % (name, getattr(stats_map, name), value)
               for name, value in sorted(expected.items()) if getattr(stats_map, name) != value]
    if differs:
        raise ObjectError("the object's map %s has another layout: %s" % (layout.STATS_MAP, "; ".join(differs)),
                         hint="rebuild the object from this version's bpf/ (make build-ebpf)")


def check_stats_map(obj):
    """Refuse a loaded object whose stats map is not the one layout.py reads, naming what differs."""
    _check_layout(obj.map(layout.STATS_MAP))


def check_object(data):
    """Refuse, before loading, an object without the probe's program and stats map, or with another layout."""
    from probe.bpf.spec import read_object  # only objects from files pay for the ELF and BTF readers
    spec = read_object(data)
    for kind, name, found in (("program", layout.PROGRAM, spec.programs), ("map", layout.STATS_MAP, spec.maps)):
        if name not in found:
            raise ObjectError("the object has no %s %s (it has: %s)" % (kind, name, ", ".join(sorted(found)) or
                                                                     "none"),
                             hint="build it from this version's bpf/ (make build-ebpf)")
    _check_layout(spec.maps[layout.STATS_MAP])


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


def read_counters(obj, direction="rx"):
    """Cumulative counters of one direction from a loaded object's stats map, summed over CPUs."""
    return layout.decode_stats(obj.map(layout.STATS_MAP).lookup(layout.KEY.pack(layout.DIRECTIONS.index(direction))))


class Attachment(object):
    """The probe's program on one interface: its own loaded object (so its own counters) and link."""

    def __init__(self, obj, hook, pins=None):
        self.object = obj
        self.link = hook
        self.pins = pins  # a PinDir when the state outlives the probe
        self.interface = hook.interface
        self.ifindex = hook.ifindex
        self.mode = hook.mode
        self.hook = hook.hook
        self.method = hook.method
        self.reloads = 0

    @property
    def program_id(self):
        return self.link.program_id

    def counters(self, direction="rx"):
        """Cumulative counters of one direction since attach."""
        return read_counters(self.object, direction)

    def replace_program(self, obj):
        """Swap in the program of `obj`, loaded onto this attachment's stats map, and let the old one go."""
        self.link.update(obj.program(layout.PROGRAM).fd)
        self.object, old = obj, self.object
        old.close()
        self.reloads += 1

    def close(self):
        """Detach, unless pinned: then the program goes on counting into its pinned map."""
        self.link.close(keep=self.pins is not None)
        self.object.close()


class NetworkMonitor(object):
    """Counts the packets of interfaces: attach() them, read packet_stats(), close() to detach all."""

    def __init__(self, engine=None, object_path=None, loader="auto", pin_dir=None):
        self.engine = engine or open_engine(loader)
        self.source = ObjectSource(object_path)
        self.pin_dir = pin_dir
        if pin_dir:
            ensure_bpffs(pin_dir)  # before anything is loaded or attached
        self.attachments = []

    def attach(self, interface, mode="auto", force=False, method="auto"):
        """Load the program and attach it to an interface's XDP hook; returns the Attachment.

        mode: "native", "generic" or "auto"; method: "link", "netlink" or "auto" (see probe.attach.xdp).
        """
        if any(a.interface == interface for a in self.attachments):
            raise ProbeError("%s is named twice" % interface)
        interfaces.ifindex(interface)  # a typo fails here, before anything is loaded
        pins = PinDir(self.pin_dir, interface) if self.pin_dir else None
        if pins and pins.exists():
            attachment = self._take_over(interface, pins)
        else:
            obj = self._load()
            try:
                hook = xdp.attach_xdp(obj.program(layout.PROGRAM).fd, interface, mode, force, method)
            except BaseException:
                obj.close()
                raise
            attachment = Attachment(obj, hook, pins)
            if pins:
                self._pin(attachment)
        self.attachments.append(attachment)
        return attachment

    def _load(self, stats_map_fd=None):
        """Read and load the object (onto an existing stats map, if given), its map checked before any read."""
        try:
            data = self.source.read()
            obj = self.engine.load_bytes(data, reuse_maps={layout.STATS_MAP: stats_map_fd} if stats_map_fd else None)
            try:
                check_stats_map(obj)  # before the first read: a larger value would overrun the read buffer
            except ProbeError:
                obj.close()
                raise
        except ProbeError as e:
            if self.source.path:
                raise e.wrap(self.source.path) from e
            raise
        return obj

    def _pin(self, attachment):
        try:
            attachment.pins.pin(attachment.object.map(layout.STATS_MAP).fd, attachment.link.fd)
        except Exception:
            attachment.pins.remove()
            attachment.pins = None  # so closing detaches
            attachment.close()
            raise

    def _take_over(self, interface, pins):
        """Adopt what a previous run left pinned: its map (counters and all), its attachment; then swap in
        this run's program."""
        map_fd = pins.open_map()
        try:
            obj = self._load(map_fd)
        finally:
            os.close(map_fd)
        try:
            hook = xdp.take_over(interface, layout.OWNER, pins.open_link())
        except BaseException:
            obj.close()
            raise
        attachment = Attachment(obj, hook, pins)
        try:
            attachment.link.update(obj.program(layout.PROGRAM).fd)
        except ProbeError:
            attachment.close()
            raise
        log.info("%s: took over the program pinned in %s", interface, pins.path)
        return attachment

    def reload(self):
        """Read the object again and swap its program in on every interface, counters kept; on failure the
        running programs stay."""
        for a in self.attachments:
            obj = self._load(a.object.map(layout.STATS_MAP).fd)
            try:
                a.replace_program(obj)
            except ProbeError:
                obj.close()
                raise

    def packet_stats(self):
        """{interface: {"rx": counters}} for every attached interface, cumulative since attach."""
        return {a.interface: {"rx": a.counters("rx")} for a in self.attachments}

    def close(self):
        """Detach from every interface."""
        while self.attachments:
            self.attachments.pop().close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
