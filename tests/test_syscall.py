"""The bpf(2) layer (probe.bpf.syscall): kernel refusals as KernelError with their errno, EAGAIN retries."""
import errno

import pytest

from probe.bpf import constants, syscall
from probe.errors import KernelError, ProbeError


@pytest.mark.integration
def test_refusal_is_a_kernel_error_naming_the_command():
    """A map of no size is refused: KernelError (a ProbeError) with EINVAL, naming BPF_MAP_CREATE."""
    with pytest.raises(KernelError) as refused:
        syscall.map_create(syscall.MapCreateAttr(map_type=constants.BPF_MAP_TYPE_HASH, key_size=0, value_size=0,
                                                 max_entries=0))
    assert isinstance(refused.value, ProbeError)
    assert refused.value.errno == errno.EINVAL
    assert refused.value.message == "BPF_MAP_CREATE: Invalid argument"


def flaky_bpf(monkeypatch, failures):
    """Make bpf() fail with each errno of `failures` in turn, then return 42; returns the calls made."""
    calls = []

    def bpf(cmd, attr):
        calls.append(cmd)
        if len(calls) <= len(failures):
            raise KernelError("BPF_PROG_LOAD: refused", errno=failures[len(calls) - 1])
        return 42

    monkeypatch.setattr(syscall, "bpf", bpf)
    return calls


def test_prog_load_retries_eagain(monkeypatch):
    calls = flaky_bpf(monkeypatch, [errno.EAGAIN, errno.EAGAIN])
    assert syscall.prog_load(syscall.ProgLoadAttr()) == 42
    assert calls == [constants.BPF_PROG_LOAD] * 3


def test_prog_load_gives_up_after_five_eagains(monkeypatch):
    calls = flaky_bpf(monkeypatch, [errno.EAGAIN] * 5)
    with pytest.raises(KernelError) as refused:
        syscall.prog_load(syscall.ProgLoadAttr())
    assert refused.value.errno == errno.EAGAIN and len(calls) == 5


def test_prog_load_does_not_retry_other_errors(monkeypatch):
    calls = flaky_bpf(monkeypatch, [errno.EACCES])
    with pytest.raises(KernelError):
        syscall.prog_load(syscall.ProgLoadAttr())
    assert len(calls) == 1


def test_wrap_keeps_the_kind_errno_log_and_cause():
    cause = KernelError("BPF_MAP_CREATE: Invalid argument", errno=errno.EINVAL, log="why")
    try:
        try:
            raise cause
        except KernelError as e:
            raise e.wrap("cannot create map knp_stats") from e
    except KernelError as wrapped:
        assert wrapped.message == "cannot create map knp_stats: BPF_MAP_CREATE: Invalid argument"
        assert (wrapped.errno, wrapped.log, wrapped.__cause__) == (errno.EINVAL, "why", cause)
        assert cause.message == "BPF_MAP_CREATE: Invalid argument"  # the cause is left as it was
