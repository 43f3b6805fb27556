"""The probe's one error type."""


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
