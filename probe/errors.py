"""The probe's error family: one base the command line catches, subclasses callers can tell apart."""
import errno as _errno


class ProbeError(Exception):
    """A failure the user can act on: what went wrong, what to do, and the cause's errno and log."""

    def __init__(self, message, hint=None, errno=None, log=None, doctor=False):
        Exception.__init__(self, message)
        self.message = message
        self.hint = hint
        self.errno = errno
        self.log = log  # e.g. the verifier's log, shown under -v
        self.doctor = doctor  # whether `kubenetprobe doctor` checks its cause: the command line points there

    def __str__(self):
        if self.hint:
            return "%s; %s" % (self.message, self.hint)
        return self.message

    def wrap(self, context, hint=None):
        """A new error of the same kind saying `context: message`, for `raise e.wrap(...) from e`."""
        return type(self)("%s: %s" % (context, self.message), hint=hint or self.hint, errno=self.errno,
                          log=self.log, doctor=self.doctor)


class ObjectError(ProbeError):
    """A BPF object that is damaged, or uses something the loader does not support."""


class VerifierError(ProbeError):
    """A program the kernel's verifier refused; `log` holds the verifier's words."""


class KernelError(ProbeError):
    """A system call the kernel refused; `errno` says why."""


# Capability numbers (linux/capability.h) the probe needs: CAP_BPF and CAP_PERFMON came with 5.8; before,
# CAP_SYS_ADMIN held what they hold. CAP_SYS_RESOURCE lifts RLIMIT_MEMLOCK, which kernels before 5.11 apply.
CAPABILITIES = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}
SECCOMP_MODES = ("disabled", "strict", "filter")  # Seccomp: in /proc/PID/status
STATUS = "/proc/self/status"


def read_status(path=STATUS):
    """/proc/self/status as {field: value}; {} where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except (IOError, OSError):
        return {}
    return parse_status(text)


def parse_status(text):
    """The `Name: value` lines of a /proc/PID/status text as {name: value}."""
    fields = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields[name.strip()] = value.strip()
    return fields


def effective_capabilities(status):
    """The names (of CAPABILITIES) in the status's CapEff mask; an empty set where it has none or no mask."""
    try:
        mask = int(status.get("CapEff", "0"), 16)
    except ValueError:
        mask = 0
    return set(name for name, bit in CAPABILITIES.items() if mask >> bit & 1)


def capable(caps):
    """Whether these capabilities let the probe load and attach programs (kernel 5.8+, or SYS_ADMIN)."""
    return "SYS_ADMIN" in caps or {"BPF", "NET_ADMIN"} <= caps


def seccomp_filtered(status):
    """Whether the status says the process runs under a seccomp filter (Seccomp: 2)."""
    return status.get("Seccomp") == str(SECCOMP_MODES.index("filter"))


PRIVILEGES_FIX = "run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
SECCOMP_BLOCKED = "bpf(2) is blocked by a seccomp filter, though the capabilities are there"
SECCOMP_FIX = "allow bpf in the container's seccomp profile (deploy/seccomp/kubenetprobe.json) or run it unconfined"


def blocked_by_seccomp(e, status):
    """Whether an error (of bpf(2)) is a seccomp filter's refusal: EPERM, under a filter, with the capabilities
    there (a filter such as the container runtimes' default answers EPERM to bpf(2) without CAP_SYS_ADMIN)."""
    return e.errno == _errno.EPERM and capable(effective_capabilities(status)) and seccomp_filtered(status)


def permission_error(e, status=None):
    """The one error for EPERM/EACCES anywhere (keeping the cause's log), or None for other errors; `status`
    is read_status()'s, read when not given."""
    if e.errno not in (_errno.EPERM, _errno.EACCES):
        return None
    if blocked_by_seccomp(e, read_status() if status is None else status):
        return KernelError("%s: %s" % (SECCOMP_BLOCKED, SECCOMP_FIX), errno=e.errno, log=e.log, doctor=True)
    return KernelError("permission denied (%s)" % e.message, hint=PRIVILEGES_FIX, errno=e.errno, log=e.log,
                       doctor=True)
