"""The probe's error family: one base the command line catches, subclasses callers can tell apart."""
import errno as _errno


class ProbeError(Exception):
    """A failure the user can act on: what went wrong, what to do, and the cause's errno and log."""

    def __init__(self, message, hint=None, errno=None, log=None):
        Exception.__init__(self, message)
        self.message = message
        self.hint = hint
        self.errno = errno
        self.log = log  # e.g. the verifier's log, shown under -v

    def __str__(self):
        if self.hint:
            return "%s; %s" % (self.message, self.hint)
        return self.message

    def wrap(self, context, hint=None):
        """A new error of the same kind saying `context: message`, for `raise e.wrap(...) from e`."""
        return type(self)("%s: %s" % (context, self.message), hint=hint or self.hint, errno=self.errno,
                          log=self.log)


class ObjectError(ProbeError):
    """A BPF object that is damaged, or uses something the loader does not support."""


class VerifierError(ProbeError):
    """A program the kernel's verifier refused; `log` holds the verifier's words."""


class KernelError(ProbeError):
    """A system call the kernel refused; `errno` says why."""


def permission_error(e):
    """The one error for EPERM/EACCES anywhere (keeping the cause's log), or None for other errors."""
    if e.errno in (_errno.EPERM, _errno.EACCES):
        return KernelError("permission denied (%s)" % e.message,
                           hint="run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON", errno=e.errno,
                           log=e.log)
    return None
