"""What every hook's attachments share: a program by its id, and the life of a bpf_link."""
import errno
import os

from probe.bpf import syscall
from probe.errors import KernelError


class program_fd(object):
    """An fd of a loaded program, by id, for the length of a `with`; None where the kernel lets only CAP_SYS_ADMIN
    open a program by id (a probe run with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, as in its Kubernetes pod)."""

    def __init__(self, prog_id):
        try:
            self.fd = syscall.prog_fd_by_id(prog_id)
        except KernelError as e:
            if e.errno != errno.EPERM:
                raise
            self.fd = None

    def __enter__(self):
        return self.fd

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


def program_name(prog_id):
    """The name of the loaded program with this id; "?" once it is gone, "" where only CAP_SYS_ADMIN may read it."""
    try:
        return syscall.prog_name_by_id(prog_id)
    except KernelError as e:
        return "" if e.errno == errno.EPERM else "?"


class LinkAttachment(object):
    """An attachment through a bpf_link (`fd`): the kernel detaches it when the link's last fd closes, even
    on SIGKILL, unless the link is pinned."""

    fd = None
    program_id = None

    def _hold(self, fd):
        """Keep the link's fd and the id of the program it runs, read once: only update() changes it, and
        reports ask for it every interval."""
        self.fd = fd
        self.program_id = syscall.link_info(fd).prog_id

    def update(self, new_prog_fd):
        """Swap in another program, atomically: no packet passes the hook without one of them (only if the link
        still runs ours, where the running program can be opened)."""
        with program_fd(self.program_id) as old_prog_fd:
            syscall.link_update(self.fd, new_prog_fd, old_prog_fd)
        self.program_id = syscall.prog_info(new_prog_fd).id

    def close(self, keep=False):
        """Detach the program, unless the link is pinned (`keep` is for the pinning's sake)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
