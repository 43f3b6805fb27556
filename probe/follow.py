"""Following interfaces as they come and go: every interface that matches is attached within the main loop's
next wake-up after it appears, and released, with one last report, when it disappears."""
import errno

from probe import log
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

    def start(self):
        """Attach to every matching interface there now."""
        self._resync()

    def update(self):
        """Apply the link events that arrived; returns the attachments of interfaces that went away, closed
        only once the caller has reported them (release())."""
        gone = []
        for kind, found in self.events.read():
            if kind == "resync":
                gone += self._resync()
            elif kind == "del":
                gone += self._gone(found.ifindex)
            else:
                self._new(found)
        return gone

    def release(self, attachment):
        """Detach a vanished interface's programs and free its counters."""
        self.monitor.detach(attachment)
        log.debug("%s: gone; released", attachment.interface)

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

    def _gone(self, ifindex):
        self._refused.discard(ifindex)
        current = self._by_index(ifindex)
        return [current] if current is not None else []

    def _resync(self):
        """Make the attachments what the listing says: new interfaces attached, vanished ones returned."""
        present = netlink.links()
        indexes = {found.ifindex for found in present}
        gone = [a for a in self.monitor.attachments if a.ifindex not in indexes]
        for found in present:
            self._new(found)
        return gone
