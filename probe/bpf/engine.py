"""What every loader engine gives: an ELF object in, its programs and maps in the kernel out; and which
engine to use."""
import resource

from probe.bpf import log
from probe.errors import ProbeError, VerifierError

LOADERS = ("auto", "libbpf", "native")


def raise_memlock_limit():
    """Lift RLIMIT_MEMLOCK: kernels before 5.11 charge BPF maps and programs against it."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass  # unprivileged: the load itself will say what is wrong


def verifier_error(verifier_log, err, log=None):
    """The VerifierError for a program the verifier refused, saying why in one line; None without a reason."""
    for line in reversed(verifier_log.splitlines()):
        line = line.strip()
        if line and not line.startswith(("processed ", "verification time", "stack depth", "libbpf:")):
            return VerifierError("the verifier rejected the program: %s" % line,
                                 hint="run with -v for the verifier's log", errno=err, log=log or verifier_log)
    return None


class Engine(object):
    """Loads ELF objects into the kernel."""

    name = None

    def load_bytes(self, data, reuse_maps=None, pin_root=None, max_entries=None, programs=None):
        """Load an ELF object held in memory; returns a LoadedObject.

        reuse_maps {name: fd}: maps already in the kernel to use instead of creating the object's own
        (a reload keeps its counters this way); the caller keeps its fds. pin_root: the folder on a
        bpffs where maps declared with pinning by name are pinned (default /sys/fs/bpf). max_entries
        {name: n}: capacities that replace those the object declares for these maps (a map it does not declare
        is left out; a reused map must have them).
        programs: the names of the programs to load, the others left out (default: every one).
        """
        raise NotImplementedError

    def load_file(self, path, reuse_maps=None, pin_root=None, max_entries=None):
        """Load an ELF object from a file; returns a LoadedObject."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ProbeError("cannot read %s: %s" % (path, e.strerror), errno=e.errno)
        return self.load_bytes(data, reuse_maps, pin_root, max_entries)


def open_engine(loader="auto"):
    """The engine that loads objects: "libbpf" (the system's, through ctypes), "native" (bpf(2) alone),
    or "auto": libbpf where it loads, else native."""
    if loader not in LOADERS:
        raise ProbeError("unknown loader %r" % loader, hint="use one of %s" % ", ".join(LOADERS))
    if loader in ("auto", "libbpf"):
        from probe.bpf.libbpf import LibbpfEngine
        try:
            engine = LibbpfEngine()
        except ProbeError as e:
            if loader == "libbpf":
                raise
            log.debug("loader auto: %s; using the native loader", e.message)
        else:
            log.debug("loader: libbpf %s", engine.version)
            return engine
    from probe.bpf.native import NativeEngine
    log.debug("loader: native")
    return NativeEngine()
