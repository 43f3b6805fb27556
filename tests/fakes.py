"""Stand-ins for a running monitor, for the report and output tests: counters without a kernel."""
from probe import layout


def counters(packets_by_l3, bytes_per_packet=100, l4=None):
    """A decoded counters dict as layout.decode_stats returns it."""
    l3 = {n: {"packets": packets_by_l3.get(n, 0), "bytes": packets_by_l3.get(n, 0) * bytes_per_packet}
          for n in layout.L3}
    l4 = {n: {"packets": (l4 or {}).get(n, 0), "bytes": (l4 or {}).get(n, 0) * bytes_per_packet} for n in layout.L4}
    return {"packets": sum(c["packets"] for c in l3.values()), "bytes": sum(c["bytes"] for c in l3.values()),
            "l3": l3, "l4": l4}


class FakeAttachment(object):
    """An attachment whose reads hand out the counters queued in `values`, one per read."""

    interface, ifindex, mode, hook, method, program_id, reloads = "eth0", 2, "generic", "xdp", "netlink", 42, 3

    def __init__(self):
        self.values = []

    def counters(self, direction):
        assert direction == "rx"
        return self.values.pop(0)


class FakeEngine(object):
    name = "libbpf"


class FakeMonitor(object):
    """Stands in for NetworkMonitor: an engine named libbpf and one FakeAttachment."""

    def __init__(self):
        self.engine = FakeEngine()
        self.attachments = [FakeAttachment()]
