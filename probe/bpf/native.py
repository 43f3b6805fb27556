"""The native engine: loads an object with bpf(2) alone, no libbpf (read by probe.bpf.spec, created here)."""
import ctypes
import errno
import os
import sys

from probe import log
from probe.bpf import syscall
from probe.bpf.constants import BPF_BTF_LOAD, BPF_INSN_SIZE, BPF_PROG_TYPE_XDP, BPF_PSEUDO_MAP_FD, BPF_XDP
from probe.bpf.engine import Engine, raise_memlock_limit, verifier_error
from probe.bpf.objects import LoadedObject
from probe.bpf.spec import read_object
from probe.errors import KernelError, ObjectError, permission_error

# As libbpf sets it for SEC("xdp").
_EXPECTED_ATTACH_TYPE = {BPF_PROG_TYPE_XDP: BPF_XDP}
_LOG_SIZE = 1 << 16
_MAX_LOG_SIZE = 1 << 24


class NativeObject(LoadedObject):
    """Maps and programs created with bpf(2); closing closes their fds."""

    def __init__(self, programs, maps, btf_fd, pins=()):
        LoadedObject.__init__(self, programs, maps, pins)
        self._btf_fd = btf_fd

    def _release(self):
        for item in list(self.programs.values()) + list(self.maps.values()):
            os.close(item.fd)
        if self._btf_fd is not None:
            os.close(self._btf_fd)
        self._btf_fd = None


def _name(name):
    return name.encode("ascii", "replace")[:15]  # BPF_OBJ_NAME_LEN, with its NUL


def _load_btf(blob):
    """The fd of the object's BTF in the kernel, or None where the kernel does not take it."""
    data = ctypes.create_string_buffer(blob, len(blob))
    try:
        return syscall.bpf(BPF_BTF_LOAD, syscall.BtfLoadAttr(btf=ctypes.addressof(data),
                                                                     btf_size=len(blob)))
    except KernelError as e:
        perm = permission_error(e)
        if perm:
            raise perm
        log.debug("native: the kernel does not take the object's BTF (%s); loading without it", e.message)
        return None


def _create_map(spec, btf_fd):
    try:
        return _create_map_with_btf(spec, btf_fd)
    except KernelError as e:
        raise (permission_error(e) or e.wrap("cannot create map %s" % spec.name)) from e


def _create_map_with_btf(spec, btf_fd):
    """Create a map, typed with its BTF where the kernel takes it."""
    attr = syscall.MapCreateAttr(map_type=spec.type, key_size=spec.key_size, value_size=spec.value_size,
                                 max_entries=spec.max_entries, map_flags=spec.flags, map_name=_name(spec.name))
    if btf_fd is not None and spec.btf_value_type_id:
        attr.btf_fd, attr.btf_key_type_id, attr.btf_value_type_id = \
            btf_fd, spec.btf_key_type_id, spec.btf_value_type_id
        try:
            return syscall.map_create(attr)
        except KernelError as e:
            if e.errno != errno.EINVAL:
                raise
            log.debug("native: map %s refused its BTF types (%s); creating it without", spec.name, e.message)
            attr.btf_fd = attr.btf_key_type_id = attr.btf_value_type_id = 0
    return syscall.map_create(attr)


def _relocated(program, map_fds):
    """The program's instructions with each map reference turned into that map's fd."""
    insns = bytearray(program.instructions)
    for index, map_name in program.map_relocations:
        at = index * BPF_INSN_SIZE
        dst = insns[at + 1] & 0x0F
        insns[at + 1] = dst | (BPF_PSEUDO_MAP_FD << 4)
        insns[at + 4:at + 8] = map_fds[map_name].to_bytes(4, sys.byteorder, signed=True)
    return bytes(insns)


def _with_btf(attr, program, btf_fd, buffers):
    """A copy of the load attr that describes the program with its BTF: functions and source lines."""
    described = syscall.ProgLoadAttr.from_buffer_copy(attr)
    described.prog_btf_fd = btf_fd
    for what in ("func_info", "line_info"):
        rec_size, records = getattr(program, what)
        buffers.append(ctypes.create_string_buffer(records, len(records)))
        setattr(described, what + "_rec_size", rec_size)
        setattr(described, what, ctypes.addressof(buffers[-1]))
        setattr(described, what + "_cnt", len(records) // rec_size)
    return described


def _load_program(program, insns, license, btf_fd):
    """The fd of a loaded program, described by its BTF where the kernel takes that; a refusal is retried
    with the verifier's log, for the reason."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode("ascii", "replace"))
    attr = syscall.ProgLoadAttr(prog_type=program.prog_type, insn_cnt=len(insns) // BPF_INSN_SIZE,
                                insns=ctypes.addressof(code), license=ctypes.addressof(lic),
                                prog_name=_name(program.name),
                                expected_attach_type=_EXPECTED_ATTACH_TYPE.get(program.prog_type, 0))
    buffers = []
    attempts = [attr]
    if btf_fd is not None and program.func_info and program.line_info:
        attempts.insert(0, _with_btf(attr, program, btf_fd, buffers))
    first = None
    for attempt in attempts:
        try:
            return syscall.prog_load(attempt)
        except KernelError as e:
            if e.errno not in (errno.EACCES, errno.EINVAL):
                raise permission_error(e) or e
            first = first or e
            log.debug("native: the kernel refused program %s%s (%s)", program.name,
                      " with its BTF" if attempt is not attr else "", e.message)
    # Refused with and without its BTF: the program itself. Once more, for the verifier's words.
    attr = attempts[0]
    size = _LOG_SIZE
    while True:
        buf = ctypes.create_string_buffer(size)
        attr.log_level, attr.log_size, attr.log_buf = 1, size, ctypes.addressof(buf)
        try:
            return syscall.prog_load(attr)  # passed this time: the kernel's refusal was flaky
        except KernelError as e:
            if e.errno == errno.ENOSPC and size < _MAX_LOG_SIZE:
                size *= 4
                continue
            text = buf.value.decode("utf-8", "replace")
            raise verifier_error(text, first.errno) or permission_error(first) or KernelError(
                "the kernel refused to load program %s: %s" % (program.name, first.message),
                errno=first.errno, log=text or None)


class NativeEngine(Engine):
    """Loads objects with the bpf(2) system call through libc: no libbpf needed."""

    name = "native"

    def load_bytes(self, data, reuse_maps=None, pin_root=None):
        try:
            spec = read_object(bytes(data))
        except ObjectError as e:
            raise e.wrap("cannot read the object") from e
        if spec.byteorder != sys.byteorder:
            raise ObjectError("the object is %s-endian, this machine %s-endian" % (spec.byteorder, sys.byteorder))
        raise_memlock_limit()
        btf_fd = _load_btf(spec.btf) if spec.btf else None
        maps, programs = {}, {}
        try:
            for name, map_spec in sorted(spec.maps.items()):
                if reuse_maps and name in reuse_maps:
                    maps[name] = os.dup(reuse_maps[name])  # this object's own fd of the kernel's map
                else:
                    maps[name] = _create_map(map_spec, btf_fd)
            for name, program in sorted(spec.programs.items()):
                programs[name] = _load_program(program, _relocated(program, maps), spec.license or "", btf_fd)
            return NativeObject(programs, maps, btf_fd)
        except BaseException:  # KeyboardInterrupt too: no fd is left behind
            for fd in list(programs.values()) + list(maps.values()) + [btf_fd]:
                if fd is not None:
                    os.close(fd)
            raise
