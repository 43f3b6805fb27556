"""Attach lifecycle and counters: the probe on a set of interfaces, and reports of what it counted."""
import time

from probe import interfaces, layout, log, syscall
from probe.bytecode import embedded_object
from probe.errors import ProbeError


LOADERS = ("auto", "libbpf", "native")


def open_engine(loader="auto"):
    """The engine that loads objects: "libbpf" (the system's, through ctypes), "native" (bpf(2) alone),
    or "auto": libbpf where it loads, else native."""
    if loader not in LOADERS:
        raise ProbeError("unknown loader %r" % loader, hint="use one of %s" % ", ".join(LOADERS))
    if loader in ("auto", "libbpf"):
        from probe.libbpf import LibbpfEngine
        try:
            engine = LibbpfEngine()
        except ProbeError as e:
            if loader == "libbpf":
                raise
            log.debug("loader auto: %s; using the native loader", e.message)
        else:
            log.debug("loader: libbpf %s", engine.version)
            return engine
    from probe.native import NativeEngine
    log.debug("loader: native")
    return NativeEngine()


def check_stats_map(obj):
    """Refuse an object whose stats map is not the one probe/layout.py reads, naming what differs."""
    info = syscall.map_info(obj.map_fd(layout.STATS_MAP))
    expected = {"type": syscall.BPF_MAP_TYPE_PERCPU_ARRAY, "key_size": layout.KEY.size,
                "value_size": layout.STATS.size, "max_entries": len(layout.DIRECTIONS)}
    differs = ["%s %d, not %d" % (name, getattr(info, name), value)
               for name, value in sorted(expected.items()) if getattr(info, name) != value]
    if differs:
        raise ProbeError("the object's map %s has another layout: %s" % (layout.STATS_MAP, "; ".join(differs)),
                         hint="rebuild the object from this version's bpf/ (make build-ebpf)")


def read_counters(obj, direction="rx", ncpus=None):
    """Cumulative counters of one direction from a loaded object's stats map, summed over CPUs."""
    ncpus = ncpus or layout.possible_cpus()
    key = layout.KEY.pack(layout.DIRECTIONS.index(direction))
    return layout.decode_stats(obj.lookup(layout.STATS_MAP, key, layout.STATS_STRIDE * ncpus), ncpus)


class Attachment(object):
    """The probe's program on one interface: its own loaded object (so its own counters) and link."""

    def __init__(self, obj, link):
        self.object = obj
        self.link = link
        self.interface = link.interface
        self.ifindex = link.ifindex
        self.mode = link.mode
        self.hook = link.hook
        self.method = link.method
        self._ncpus = layout.possible_cpus()

    def counters(self, direction="rx"):
        """Cumulative counters of one direction since attach."""
        return read_counters(self.object, direction, self._ncpus)

    def close(self):
        self.link.close()
        self.object.close()


class NetworkMonitor(object):
    """Counts the packets of interfaces: attach() them, read packet_stats(), close() to detach all."""

    def __init__(self, engine=None, object_bytes=None, loader="auto"):
        self.engine = engine or open_engine(loader)
        self.object_bytes = object_bytes or embedded_object()
        self.attachments = []

    def attach(self, interface, mode="auto", force=False, method="auto"):
        """Load the program and attach it to an interface's XDP hook; returns the Attachment.

        mode: "native", "generic" or "auto"; method: "link", "netlink" or "auto" (see probe.link).
        """
        if any(a.interface == interface for a in self.attachments):
            raise ProbeError("%s is named twice" % interface)
        interfaces.ifindex(interface)  # a typo fails here, before anything is loaded
        obj = self.engine.load_bytes(self.object_bytes)
        try:
            check_stats_map(obj)  # before the first read: a larger value would overrun the read buffer
            link = obj.attach_xdp(layout.PROGRAM, interface, mode, force, method)
        except Exception:
            obj.close()
            raise
        attachment = Attachment(obj, link)
        self.attachments.append(attachment)
        return attachment

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


def _rate(now, before, seconds):
    return (now - before) / seconds if seconds > 0 else 0.0


def _iso_utc(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


class Reporter(object):
    """Turns a monitor's counters into reports with rates over the time since the previous report."""

    def __init__(self, monitor):
        self.monitor = monitor
        self._previous = {}
        self._started = time.monotonic()

    def reports(self, final=False):
        """One report per interface, in the JSON shape the CLI prints."""
        now = time.monotonic()
        wall = time.time()
        out = []
        for a in self.monitor.attachments:
            rx = a.counters("rx")
            before_time, before = self._previous.get(a.interface, (self._started, None))
            seconds = now - before_time
            rx["pps"] = _rate(rx["packets"], before["packets"] if before else 0, seconds)
            rx["bps"] = _rate(8 * rx["bytes"], 8 * before["bytes"] if before else 0, seconds)
            self._previous[a.interface] = (now, rx)
            out.append({
                "time": _iso_utc(wall),
                "interface": a.interface,
                "ifindex": a.ifindex,
                "hook": a.hook,
                "mode": a.mode,
                "loader": self.monitor.engine.name,
                "attach": a.method,
                "final": final,
                "rx": {"packets": rx["packets"], "bytes": rx["bytes"], "pps": rx["pps"], "bps": rx["bps"],
                       "l3": rx["l3"], "l4": rx["l4"]},
            })
        return out
