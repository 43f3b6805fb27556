"""Who owns an interface: the pod or container whose network namespace holds a veth's (or netkit's) peer, read
from the container runtimes' state on this node (their OCI specs), with no API server and no network.

containerd (Kubernetes CRI) keeps each sandbox's spec at <root>/<namespace>/<id>/config.json under its runtime-v2
task folder; CRI-O and podman (containers/storage) at <root>/overlay-containers/<id>/userdata/config.json. A spec
names its network namespace's file in linux.namespaces; the kernel's id for that namespace (RTM_GETNSID) is what a
link's IFLA_LINK_NETNSID says of its peer."""
import collections
import os

from probe.bpf import log
from probe.errors import ProbeError
from probe.net import link as netlink
from probe.net import netns

CONTAINERD_TASKS = "io.containerd.runtime.v2.task"
DEFAULT_ROOTS = ("/run/containerd/" + CONTAINERD_TASKS, "/var/lib/containers/storage", "/run/containers/storage")
NETNS_DIR = "/var/run/netns"
PEERED_KINDS = ("veth", "netkit")  # links whose peer may live in a pod's namespace

# Annotations: containerd's CRI plugin, and CRI-O's (podman writes them too when given with --annotation).
CONTAINERD_POD = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.cri.sandbox-namespace",
                  "io.kubernetes.cri.sandbox-uid")
CRIO_POD = ("io.kubernetes.pod.name", "io.kubernetes.pod.namespace", "io.kubernetes.pod.uid")
PODMAN_MANAGER = ("io.container.manager", "libpod")


class Owner(collections.namedtuple("Owner", "kind name namespace uid runtime")):
    """A pod (kind "pod": name, namespace and uid from Kubernetes) or a container (kind "container": its name,
    and its id as uid), and the runtime that runs it."""

    __slots__ = ()

    def json(self):
        return dict(self._asdict())


def _read_json(path):
    """A JSON file's content, or None if it is gone or damaged (a runtime may be writing or removing it)."""
    import json  # only a node with a runtime's state pays for it
    try:
        with open(path) as f:
            return json.load(f)
    except (IOError, OSError, ValueError):
        return None


def netns_path(spec):
    """The network namespace file an OCI spec names, or None (the host's network, or a namespace made anew)."""
    linux = spec.get("linux") if isinstance(spec, dict) else None
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    for ns in namespaces if isinstance(namespaces, list) else ():
        if isinstance(ns, dict) and ns.get("type") == "network":
            path = ns.get("path")
            return path if isinstance(path, str) and path else None
    return None


def _annotations(spec):
    """A spec's annotations with text values (a damaged one may hold anything)."""
    found = spec.get("annotations")
    return {k: v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}


def _pod(annotations, keys, runtime):
    name, namespace, uid = (annotations.get(k) for k in keys)
    return Owner("pod", name, namespace or "", uid or "", runtime) if name else None


def containerd_owner(spec, container_id):
    """The Owner a containerd spec describes: its pod (CRI annotations), else the container by its id."""
    annotations = _annotations(spec)
    return _pod(annotations, CONTAINERD_POD, "containerd") or Owner("container", container_id, "", container_id,
                                                                     "containerd")


def storage_owner(spec, container_id, name=None):
    """The Owner a CRI-O or podman spec describes: its pod (Kubernetes annotations), else the container by its
    name (containers.json) or id."""
    annotations = _annotations(spec)
    runtime = "podman" if annotations.get(PODMAN_MANAGER[0]) == PODMAN_MANAGER[1] else "cri-o"
    return _pod(annotations, CRIO_POD, runtime) or Owner("container", name or container_id, "", container_id,
                                                         runtime)


def _storage_names(root):
    """{id: first name} from containers/storage's containers.json."""
    found = _read_json(os.path.join(root, "overlay-containers", "containers.json"))
    return {c["id"]: c["names"][0] for c in found or () if isinstance(c, dict) and isinstance(c.get("id"), str)
            and isinstance(c.get("names"), list) and c["names"] and isinstance(c["names"][0], str)}


def _layout(root):
    """("storage", root) for a containers/storage root; ("containerd", task folder) for containerd's state (its
    runtime-v2 task folder, or the folder holding it)."""
    if os.path.isdir(os.path.join(root, "overlay-containers")):
        return "storage", root
    if os.path.isdir(os.path.join(root, CONTAINERD_TASKS)):
        return "containerd", os.path.join(root, CONTAINERD_TASKS)
    return "containerd", root


def state_folder(root):
    """(runtime, the folder that lists its containers) of a state root: containers/storage's overlay-containers,
    or containerd's runtime-v2 task folder (a folder per containerd namespace)."""
    kind, base = _layout(root)
    if kind == "storage":
        return "containers/storage", os.path.join(base, "overlay-containers")
    return "containerd", base


def _watched(root):
    """The folders whose change (an entry made or removed) means a container came or went."""
    kind, base = _layout(root)
    if kind == "storage":
        return [state_folder(root)[1]]
    try:
        namespaces = sorted(os.listdir(base))
    except OSError:
        namespaces = []
    return [base] + [os.path.join(base, name) for name in namespaces]


def scan(root):
    """([(spec path, Owner, netns path)] of every container a state folder holds that has a network namespace of
    its own, [the paths of specs not (yet) readable: a runtime writes a container's spec after making its
    folder])."""
    import glob  # only a node with a runtime's state pays for re
    kind, base = _layout(root)
    if kind == "storage":
        names = _storage_names(base)
        folders = glob.glob(os.path.join(glob.escape(base), "overlay-containers", "*", ""))
        paths = [os.path.join(folder, "userdata", "config.json") for folder in folders]
    else:
        folders = glob.glob(os.path.join(glob.escape(base), "*", "*", ""))
        paths = [os.path.join(folder, "config.json") for folder in folders]
    found, unread = [], []
    for folder, path in sorted(zip(folders, paths)):
        spec = _read_json(path)
        if spec is None:
            unread.append(path)
            continue
        netns_file = netns_path(spec)
        # /proc/PID/ns/net (a pod's other containers) may be another process's in the probe's pid namespace (a
        # DaemonSet's): the pod's sandbox names its namespace by a file of its own.
        if netns_file is None or netns_file.startswith("/proc/"):
            continue
        container_id = os.path.basename(os.path.dirname(folder))
        if kind == "storage":
            owner = storage_owner(spec, container_id, names.get(container_id))
        else:
            owner = containerd_owner(spec, container_id)
        found.append((path, owner, netns_file))
    return found, unread


def state(root):
    """(spec path, Owner, netns path) of every container a state folder holds that has a network namespace of its
    own."""
    return scan(root)[0]


def _stat(path):
    """What tells that a file or folder changed: its inode, modification time, size and link count (two changes
    within one tick of the file system's clock still differ in those), or None if it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size, st.st_nlink


def nsid_of(path, netns_dir=NETNS_DIR):
    """This namespace's id for the network namespace at `path` (tried again under netns_dir, where a container
    mounts the host's /var/run/netns), or None: no such namespace, or none of our links has a peer there."""
    for candidate in (path, os.path.join(netns_dir, os.path.basename(path))):
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            return netns.nsid(fd)
        except ProbeError:
            return None  # not a network namespace
        finally:
            os.close(fd)
    return None


class Owners(object):
    """The owner of each interface, by ifindex, from the state folders `roots` (default: the runtimes' usual
    places). An interface's owner is looked up on its first report (and on later ones while it has none); the
    state is read again only then, and only if a state folder changed or a spec not readable before changed."""

    def __init__(self, roots=None, netns_dir=NETNS_DIR):
        self.roots = list(roots or DEFAULT_ROOTS)
        self.netns_dir = netns_dir
        self._signature = None
        self._unread = {}  # spec path: its _stat() when it was not readable at the last scan
        self._entries = {}  # spec path: [Owner, netns path, nsid or None]
        self._by_nsid = {}
        self._interfaces = {}  # ifindex: Owner, or None for an interface that can have none
        self._unowned = {}  # ifindex: the nsid of its peer's namespace, which no state named when last read

    def _current_signature(self):
        return [(folder, _stat(folder)) for root in self.roots for folder in _watched(root)]

    def refresh(self, resolve=True):
        """Read the state again if a state folder changed; with `resolve` (or after reading it again), look up
        the namespaces still without an id. Whether it read the state again."""
        signature = self._current_signature()
        # A spec written since the last scan changes no folder watched: it is tried again by itself.
        rescan = signature != self._signature or any(_stat(path) != seen for path, seen in self._unread.items())
        if rescan:
            self._signature = signature  # taken before the scan: a change during it makes the next one scan
            entries, unread = {}, {}
            for root in self.roots:
                found, not_yet = scan(root)
                unread.update((path, _stat(path)) for path in not_yet)
                for path, owner, netns_file in found:
                    entries[path] = [owner, netns_file, None]
            self._entries, self._unread = entries, unread
        if rescan or resolve:
            for entry in self._entries.values():
                if entry[2] is None:
                    entry[2] = nsid_of(entry[1], self.netns_dir)
            by_nsid = {}
            # A pod's containers share its namespace: its pod owner wins over a container's.
            for owner, _, nsid in sorted(self._entries.values(), key=lambda e: (e[0].kind != "pod", e[0])):
                if nsid is not None:
                    by_nsid.setdefault(nsid, owner)
            self._by_nsid = by_nsid
        return rescan

    def by_nsid(self, nsid):
        """The owner of the namespace this namespace knows by `nsid`, or None."""
        return self._by_nsid.get(nsid)

    def of(self, ifindex):
        """The Owner of an interface, or None (not a veth or netkit, its peer here, or nobody's we know)."""
        return self.of_all([ifindex])[ifindex]

    def of_all(self, indexes):
        """{ifindex: Owner or None} of these interfaces. The state folders are checked once for them all: an
        interface whose peer's namespace nobody owned is looked up again only once they changed, so a report
        over hundreds of veths costs a few stat calls, not a netlink request each."""
        changed = self.refresh(resolve=False)
        return {ifindex: self._of(ifindex, changed) for ifindex in indexes}

    def _of(self, ifindex, changed):
        if ifindex in self._interfaces:
            return self._interfaces[ifindex]
        if ifindex in self._unowned:
            if not changed:
                return None
            nsid = self._unowned[ifindex]
        else:
            try:
                found = netlink.link(ifindex)
            except ProbeError:
                return None  # gone
            if found is None or found.kind not in PEERED_KINDS:
                self._interfaces[ifindex] = None
                return None
            if found.link_netnsid is None:
                return None  # its peer is still here: a runtime moves it into the pod after making the pair
            nsid = found.link_netnsid
            # A new interface: the namespace ids of containers gone since may have been given again.
            self.refresh()
        owner = self.by_nsid(nsid)
        if owner is None:
            self._unowned[ifindex] = nsid
            return None
        self._unowned.pop(ifindex, None)
        log.debug("%s: %s %s%s (%s)", ifindex, owner.kind, owner.namespace + "/" if owner.namespace else "",
                  owner.name, owner.runtime)
        self._interfaces[ifindex] = owner
        return owner

    def forget(self, ifindex):
        """Forget a vanished interface (its ifindex may come back, another's)."""
        self._interfaces.pop(ifindex, None)
        self._unowned.pop(ifindex, None)
