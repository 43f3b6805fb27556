"""Reports: a monitor's counters turned into one record per interface, with rates since the previous one."""
import collections
import time

from probe import layout

_ZERO = layout.decode_stats([])


def _rate(now, before, seconds):
    return (now - before) / seconds if seconds > 0 else 0.0


def _iso_utc(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


class Reporter(object):
    """Turns a monitor's counters into reports with rates over the time since the previous report."""

    def __init__(self, monitor, owners=None):
        self.monitor = monitor
        self.owners = owners  # a probe.owners.Owners: each report says who owns its interface
        self._last = time.monotonic()
        # Counters may not start at zero (pinned state taken over): rates count from here. Keyed by ifindex,
        # which a rename keeps.
        counted = monitor.packet_stats()
        self._previous = {a.ifindex: (self._last, counted[a.interface]) for a in monitor.attachments}

    @staticmethod
    def _counters(attachment):
        return {d: attachment.counters(d) for d in sorted(attachment.hooks)}

    def reports(self, final=False):
        """One report per interface, in the JSON shape the CLI prints, from one read of every counter."""
        now, wall = time.monotonic(), time.time()
        self.monitor.count_talkers()  # the peers' counts of the interval, taken before the totals
        counted = self.monitor.packet_stats()
        owned = self._owners([a.ifindex for a in self.monitor.attachments])
        out = [self._report(a, final, counted[a.interface], now, wall, owned) for a in self.monitor.attachments]
        self._last = now
        return out

    def report(self, a, final=False):
        """The report of one interface, read now; the final one forgets it (its ifindex may come back,
        another's)."""
        return self._report(a, final, self._counters(a), time.monotonic(), time.time(), self._owners([a.ifindex]))

    def _owners(self, indexes):
        return self.owners.of_all(indexes) if self.owners is not None else None

    def _report(self, a, final, counters, now, wall, owned):
        # An interface attached since the last report started from zero.
        before_time, before = self._previous.get(a.ifindex) or (self._last, {d: _ZERO for d in counters})
        if final:
            self._previous.pop(a.ifindex, None)
        else:
            self._previous[a.ifindex] = (now, counters)
        rx = a.hooks.get("rx")
        report = {
            "time": _iso_utc(wall),
            "interface": a.interface,
            "ifindex": a.ifindex,
            "hook": rx and rx.hook,  # hook, mode, attach and program_id: the rx side's
            "mode": rx and rx.mode,
            "loader": self.monitor.engine.name,
            "attach": rx and rx.method,
            "program_id": rx and rx.program_id,
            "hooks": {d: h.hook for d, h in a.hooks.items()},
            "program_ids": {d: h.program_id for d, h in a.hooks.items()},
            "reloads": a.reloads,
            "final": final,
        }
        if owned is not None:
            owner = owned[a.ifindex]
            report["owner"] = owner and owner.json()
            if final:
                self.owners.forget(a.ifindex)
        for direction, now_counts in sorted(counters.items()):
            report[direction] = _with_rates(now_counts, before[direction], now - before_time)
        talkers = self.monitor.talker_stats(a)
        if talkers is not None:
            report["talkers"] = talkers
        return report


def _with_rates(counts, before, seconds):
    """A direction's counters with pps and bps over the last interval, in the report's key order."""
    return {"packets": counts["packets"], "bytes": counts["bytes"],
            "pps": _rate(counts["packets"], before["packets"], seconds),
            "bps": _rate(8 * counts["bytes"], 8 * before["bytes"], seconds),
            "l3": counts["l3"], "l4": counts["l4"]}


def sum_tree(values):
    """The sum of values, or of trees of dicts of values of one shape (a direction's counters)."""
    if isinstance(values[0], dict):
        return {k: sum_tree([v[k] for v in values]) for k in values[0]}
    return sum(values)


def by_owner(reports):
    """Reports grouped by owner (--group-by pod): the interfaces of one pod or container summed into one report,
    at the place of its first, with "interface" their names (comma-separated); an unowned one as it is."""
    groups = collections.OrderedDict()
    for report in reports:
        owner = report.get("owner")
        key = (owner["kind"], owner["namespace"], owner["name"]) if owner else ("interface", report["ifindex"])
        groups.setdefault(key, []).append(report)
    out = []
    for key, members in groups.items():
        if key[0] == "interface":
            out += members
            continue
        group = dict(members[0], interface=",".join(r["interface"] for r in members), ifindex=None,
                     interfaces=[r["interface"] for r in members], final=all(r["final"] for r in members))
        for direction in layout.DIRECTIONS:
            if all(direction in r for r in members):
                group[direction] = (sum_tree([r[direction] for r in members]) if len(members) > 1
                                    else members[0][direction])
        out.append(group)
    return out
