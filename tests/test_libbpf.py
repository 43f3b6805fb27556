"""The libbpf binding without loading anything: error pointers of libbpf 1.x and 0.x, the verifier's log in
libbpf's messages (both framings), errors turned into ProbeErrors, a missing library."""
import errno

import pytest

from probe.bpf.engine import verifier_error
from probe.bpf.libbpf import LibbpfEngine, verifier_log
from probe.errors import ProbeError


def test_pointer_errors(engine):
    assert engine._pointer_error(0x55550000) == 0
    assert engine._pointer_error((1 << 64) - errno.ENOENT) == errno.ENOENT  # 0.x: ERR_PTR(-ENOENT)


def test_null_pointer_takes_errno(engine, monkeypatch):
    monkeypatch.setattr("probe.bpf.libbpf.ctypes.get_errno", lambda: errno.EINVAL)
    assert engine._pointer_error(None) == errno.EINVAL


VERIFIER_LOG = """libbpf: prog 'kubenetprobe_rx': BPF program load failed: Permission denied
libbpf: prog 'kubenetprobe_rx': -- BEGIN PROG LOAD LOG --
0: R1=ctx(off=0,imm=0) R10=fp0
; unsigned char *data = (void *)(long)ctx->data;
0: (61) r1 = *(u32 *)(r1 +0)
1: (71) r1 = *(u8 *)(r1 +100)
invalid access to packet, off=100 size=1, R1(id=0,off=100,r=0)
R1 offset is outside of the packet
processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
-- END PROG LOAD LOG --
libbpf: failed to load program 'kubenetprobe_rx'
"""


# libbpf 0.x frames the log differently and returns its own error code, LIBBPF_ERRNO__VERIFY.
VERIFIER_LOG_0X = """libbpf: load bpf program failed: Permission denied
libbpf: -- BEGIN DUMP LOG ---
libbpf: 
0: (61) r1 = *(u32 *)(r1 +0)
1: (71) r1 = *(u8 *)(r1 +100)
invalid access to packet, off=100 size=1, R1(id=0,off=100,r=0)
R1 offset is outside of the packet
processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0

libbpf: -- END LOG --
libbpf: failed to load program 'kubenetprobe_rx'
"""


@pytest.mark.parametrize("text", [VERIFIER_LOG, VERIFIER_LOG_0X], ids=["libbpf-1.x", "libbpf-0.x"])
def test_verifier_reason(text):
    assert verifier_error(verifier_log(text), 13).message == \
        "the verifier rejected the program: R1 offset is outside of the packet"


def test_no_verifier_reason_in_statistics_alone():
    assert verifier_error("processed 2 insns (limit 1000000)\n\n", 13) is None


def test_verifier_rejection_on_libbpf_0x(engine):
    engine._log.lines = [VERIFIER_LOG_0X]
    e = engine._error("the kernel refused to load the program", 4007)
    assert e.message == "the verifier rejected the program: R1 offset is outside of the packet"


def test_verifier_rejection_beats_eacces(engine):
    engine._log.lines = [VERIFIER_LOG]
    e = engine._error("the kernel refused to load the program", errno.EACCES)
    assert str(e) == ("the verifier rejected the program: R1 offset is outside of the packet; "
                      "run with -v for the verifier's log")
    assert e.log == VERIFIER_LOG and engine._log.lines == []


def test_eperm_is_permission(engine):
    engine._log.lines = ["libbpf: Error in bpf_object__probe_loading():Operation not permitted(1).\n"]
    e = engine._error("the kernel refused to load the program", errno.EPERM)
    assert str(e).startswith("permission denied (the kernel refused to load the program: Operation not permitted)")
    assert "run as root" in str(e) and "probe_loading" in e.log


def test_other_errors_carry_libbpf_last_line(engine):
    engine._log.lines = ["libbpf: elf: failed to open: hmm\n", "libbpf: map 'knp_stats': too big\n"]
    e = engine._error("libbpf cannot open the object", errno.E2BIG)
    assert e.message.endswith("(map 'knp_stats': too big)") and e.errno == errno.E2BIG


def test_missing_library_is_one_clear_error():
    with pytest.raises(ProbeError) as e:
        LibbpfEngine(sonames=("libbpf-does-not-exist.so.9",))
    assert "libbpf not found" in e.value.message and "apt-get install libbpf1" in e.value.hint
