"""Stand-ins for a running monitor, for the report and output tests: counters without a kernel."""
from probe import layout


def counters(packets_by_l3, bytes_per_packet=100, l4=None):
    """A decoded counters dict as layout.decode_stats returns it."""
    l3 = {n: {"packets": packets_by_l3.get(n, 0), "bytes": packets_by_l3.get(n, 0) * bytes_per_packet}
          for n in layout.L3}
    l4 = {n: {"packets": (l4 or {}).get(n, 0), "bytes": (l4 or {}).get(n, 0) * bytes_per_packet} for n in layout.L4}
    return {"packets": sum(c["packets"] for c in l3.values()), "bytes": sum(c["bytes"] for c in l3.values()),
            "l3": l3, "l4": l4}


class FakeHook(object):
    """One direction's attachment, as probe.attach's have it: the hook, XDP's mode, the method, the program."""

    def __init__(self, hook, mode, method, program_id):
        self.hook, self.mode, self.method, self.program_id = hook, mode, method, program_id


def rx_xdp():
    return FakeHook("xdp", "generic", "netlink", 42)


def rx_tc():
    return FakeHook("tc", None, "link", 44)


def tx_tc():
    return FakeHook("tc", None, "link", 43)


class FakeAttachment(object):
    """An attachment whose reads of a direction hand out the counters queued in `values[direction]`, one per
    read; it counts the directions of `hooks` and refuses reads of any other."""

    interface, ifindex, reloads = "eth0", 2, 3

    def __init__(self, hooks, interface=None, ifindex=None):
        self.hooks = hooks
        if interface is not None:
            self.interface = interface
        if ifindex is not None:
            self.ifindex = ifindex
        self.values = {direction: [] for direction in hooks}

    def counters(self, direction):
        assert direction in self.hooks, "read of %s, which is not counted" % direction
        return self.values[direction].pop(0)


class FakeEngine(object):
    name = "libbpf"


class FakeMonitor(object):
    """Stands in for NetworkMonitor: an engine named libbpf and one FakeAttachment, by default counting rx at
    generic XDP through netlink (program 42) and tx at TC (program 43)."""

    def __init__(self, hooks=None):
        self.engine = FakeEngine()
        self.attachments = [FakeAttachment(hooks if hooks is not None else {"rx": rx_xdp(), "tx": tx_tc()})]
        self.talkers = None  # no peers counted

    def count_talkers(self):
        pass

    def talker_stats(self, attachment):
        return None

    def packet_stats(self):
        """The next queued counters of every attachment, as NetworkMonitor.packet_stats reads them all at once."""
        return {a.interface: {d: a.counters(d) for d in sorted(a.hooks)} for a in self.attachments}
