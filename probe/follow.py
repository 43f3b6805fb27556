"""Following interfaces as they come and go: every interface that matches is attached within the main loop's
next wake-up after it appears, and released, with one last report, when it disappears."""
import errno

from probe.bpf import log
from probe.errors import KernelError, ProbeError
from probe.net import events, interfaces
from probe.net import link as netlink


def has_pattern(name):
    """Whether an -i argument is a shell-style pattern rather than a name."""
    return any(c in name for c in "*?[")


class Follower(object):
    """Keeps a monitor attached to the interfaces whose names match `patterns` (None: all but lo) and none
    of `excludes`, following rtnetlink link events; an interface is known by its ifindex, so a rename
    keeps its counters."""

    def __init__(self, monitor, patterns, excludes, attach):
        self.monitor = monitor
        self.patterns = patterns
        self.excludes = excludes
        self._attach = attach  # attach(name): the monitor's attach with the command's options
        # Opened before the first listing: what changes meanwhile still arrives as an event.
        self.events = events.LinkEvents()
        self._refused = set()  # ifindexes whose attach failed: not tried again on each change of theirs

    def fileno(self):
        return self.events.fileno()

    def start(self, report):
        """Attach to every matching interface there now; an attached one already gone is handed to report()
        and released, as in update(). Returns what report() returned."""
        return self._resync(report)

    def update(self, report):
        """Apply the link events that arrived. Each interface that went away is handed to report() (its keys
        still there to read) and released at once, before the next event: a new interface may take its name.
        Returns what report() returned, in order."""
        finals = []
        for kind, found in self.events.read():
            if kind == "resync":
                finals += self._resync(report)
            elif kind == "del":
                self._refused.discard(found.ifindex)
                current = self._by_index(found.ifindex)
                if current is not None:
                    finals.append(self._farewell(current, report))
            else:
                self._new(found)
        return finals

    def release(self, attachment):
        """Detach a vanished interface's programs and free its counters."""
        self.monitor.detach(attachment)
        log.debug("%s: gone; released", attachment.interface)

    def _farewell(self, attachment, report):
        """report() a vanished interface, then release it."""
        final = report(attachment)
        self.release(attachment)
        return final

    def close(self):
        self.events.close()

    def _by_index(self, ifindex):
        return next((a for a in self.monitor.attachments if a.ifindex == ifindex), None)

    def _new(self, found):
        current = self._by_index(found.ifindex)
        if current is not None:
            if current.interface != found.name:
                log.debug("%s: renamed %s", current.interface, found.name)
                current.rename(found.name)
            return
        if found.ifindex in self._refused or not interfaces.match(found.name, self.patterns, self.excludes):
            return
        # Attaching goes by name: if the name has moved on (renamed, deleted, taken by another interface), a
        # later event says where it went, and this one's attach would fail or take another interface.
        try:
            if interfaces.ifindex(found.name) != found.ifindex:
                return
        except ProbeError:
            return
        try:
            self._attach(found.name)
        except KernelError as e:
            if e.errno not in (errno.ENODEV, errno.ENXIO):  # else gone again before the attach
                self._refuse(found, e)
            return
        except ProbeError as e:
            self._refuse(found, e)
            return
        log.debug("%s: appeared; attached", found.name)

    def _refuse(self, found, error):
        self._refused.add(found.ifindex)
        log.warning("%s: not attached: %s", found.name, error)

    def _resync(self, report):
        """Make the attachments what the listing says: vanished ones reported and released, then new interfaces
        attached; returns what report() returned."""
        present = netlink.links()
        indexes = {found.ifindex for found in present}
        finals = [self._farewell(a, report) for a in list(self.monitor.attachments) if a.ifindex not in indexes]
        for found in present:
            self._new(found)
        return finals
