"""The compiled XDP object embedded in the package, checked against its SHA-256 before use."""
import hashlib
import os

from probe.errors import ProbeError

OBJECT = "kubenetprobe.bpf.o"
_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bytecode")


def _read(name):
    # Through the package's loader, so it reads from inside a zipapp as well as from a checkout.
    loader = __loader__
    try:
        return loader.get_data(os.path.join(_DIR, name))
    except (IOError, OSError):
        raise ProbeError("the embedded XDP object %s is missing" % name,
                         hint="build it with `make build-ebpf` (or use a released kubenetprobe.pyz)")


def embedded_object():
    """The embedded ELF object's bytes, after checking them against the SHA-256 built with them."""
    data = _read(OBJECT)
    expected = _read(OBJECT + ".sha256").decode("ascii", "replace").strip()[:64]
    if hashlib.sha256(data).hexdigest() != expected:
        raise ProbeError("the embedded XDP object is damaged (SHA-256 mismatch)",
                         hint="rebuild kubenetprobe.pyz or copy it again")
    return data
