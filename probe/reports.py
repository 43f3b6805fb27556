"""Reports: a monitor's counters turned into one record per interface, with rates since the previous one."""
import time


def _rate(now, before, seconds):
    return (now - before) / seconds if seconds > 0 else 0.0


def _iso_utc(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


class Reporter(object):
    """Turns a monitor's counters into reports with rates over the time since the previous report."""

    def __init__(self, monitor):
        self.monitor = monitor
        now = time.monotonic()
        # Counters may not start at zero (pinned state taken over): rates count from here.
        self._previous = {a.interface: (now, a.counters("rx")) for a in monitor.attachments}

    def reports(self, final=False):
        """One report per interface, in the JSON shape the CLI prints."""
        now = time.monotonic()
        wall = time.time()
        out = []
        for a in self.monitor.attachments:
            rx = a.counters("rx")
            before_time, before = self._previous[a.interface]
            seconds = now - before_time
            rx["pps"] = _rate(rx["packets"], before["packets"], seconds)
            rx["bps"] = _rate(8 * rx["bytes"], 8 * before["bytes"], seconds)
            self._previous[a.interface] = (now, rx)
            out.append({
                "time": _iso_utc(wall),
                "interface": a.interface,
                "ifindex": a.ifindex,
                "hook": a.hook,
                "mode": a.mode,
                "loader": self.monitor.engine.name,
                "attach": a.method,
                "program_id": a.program_id,
                "reloads": a.reloads,
                "final": final,
                "rx": {"packets": rx["packets"], "bytes": rx["bytes"], "pps": rx["pps"], "bps": rx["bps"],
                       "l3": rx["l3"], "l4": rx["l4"]},
            })
        return out
