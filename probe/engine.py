"""What every loader engine gives: an ELF object in, its programs and maps in the kernel out."""
import resource

from probe import link, syscall
from probe.errors import ProbeError


def raise_memlock_limit():
    """Lift RLIMIT_MEMLOCK: kernels before 5.11 charge BPF maps and programs against it."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass  # unprivileged: the load itself will say what is wrong


def verifier_error(verifier_log, err, log=None):
    """The ProbeError for a program the verifier refused, saying why in one line; None without a reason."""
    for line in reversed(verifier_log.splitlines()):
        line = line.strip()
        if line and not line.startswith(("processed ", "verification time", "stack depth", "libbpf:")):
            return ProbeError("the verifier rejected the program: %s" % line,
                              hint="run with -v for the verifier's log", errno=err, log=log or verifier_log)
    return None


class LoadedObject(object):
    """Programs and maps of one object, loaded into the kernel; closing releases them."""

    def __init__(self, programs, maps):
        self.programs = programs  # name -> fd
        self.maps = maps  # name -> fd

    def program_fd(self, name):
        """The fd of a loaded program, by name."""
        try:
            return self.programs[name]
        except KeyError:
            raise ProbeError("the object has no program %r (it has: %s)" % (name, ", ".join(sorted(self.programs))))

    def map_fd(self, name):
        """The fd of a map, by name."""
        try:
            return self.maps[name]
        except KeyError:
            raise ProbeError("the object has no map %r (it has: %s)" % (name, ", ".join(sorted(self.maps))))

    def lookup(self, map_name, key, value_size):
        """The raw value under `key` in one of the object's maps."""
        return syscall.map_lookup(self.map_fd(map_name), key, value_size)

    def test_run(self, program_name, frame, repeat=1):
        """BPF_PROG_TEST_RUN: (return value, mean ns) of a program run on one frame."""
        return syscall.prog_test_run(self.program_fd(program_name), frame, repeat)

    def attach_xdp(self, program_name, interface, mode="auto", force=False, method="auto"):
        """Attach a program to an interface's XDP hook; returns a link.XdpLink or link.NetlinkXdp."""
        return link.attach_xdp(self.program_fd(program_name), interface, mode, force, method)

    def close(self):
        """Release the programs and maps (attached links keep their program alive)."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Engine(object):
    """Loads ELF objects into the kernel."""

    name = None

    def load_bytes(self, data, reuse_maps=None):
        """Load an ELF object held in memory; returns a LoadedObject.

        reuse_maps {name: fd}: maps already in the kernel to use instead of creating the object's own
        (a reload keeps its counters this way); the caller keeps its fds.
        """
        raise NotImplementedError

    def load_file(self, path, reuse_maps=None):
        """Load an ELF object from a file; returns a LoadedObject."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ProbeError("cannot read %s: %s" % (path, e.strerror), errno=e.errno)
        return self.load_bytes(data, reuse_maps)
