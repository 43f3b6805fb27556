"""The native engine: loads an object with bpf(2) alone, no libbpf (read by probe.bpf.spec, created here).

It loads what libbpf 1.x loads of XDP and TC objects: `.maps` maps (pinned by name too), global data, BPF-to-BPF
calls and callbacks; what it does not do (CO-RE, externs, struct_ops, map-in-maps, other program types) it
refuses before any system call, in check_supported.
"""
import ctypes
import errno
import os
import resource
import sys

from probe.bpf import log
from probe.bpf import syscall
from probe.bpf.constants import (BPF_BTF_LOAD, BPF_INSN_SIZE, BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_CGROUP_ARRAY,
                                 BPF_MAP_TYPE_CPUMAP, BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_DEVMAP_HASH,
                                 BPF_MAP_TYPE_HASH_OF_MAPS, BPF_MAP_TYPE_PERF_EVENT_ARRAY, BPF_MAP_TYPE_QUEUE,
                                 BPF_MAP_TYPE_RINGBUF, BPF_MAP_TYPE_SOCKHASH, BPF_MAP_TYPE_SOCKMAP,
                                 BPF_MAP_TYPE_STACK, BPF_MAP_TYPE_STACK_TRACE, BPF_MAP_TYPE_STRUCT_OPS,
                                 BPF_MAP_TYPE_USER_RINGBUF, BPF_MAP_TYPE_XSKMAP, BPF_F_RDONLY_PROG,
                                 BPF_PROG_TYPE_SCHED_CLS,
                                 BPF_PROG_TYPE_XDP, LIBBPF_PIN_BY_NAME, MAP_TYPES, PROG_TYPES)
from probe.bpf.engine import Engine, raise_memlock_limit, verifier_error
from probe.bpf.objects import LoadedObject, possible_cpus
from probe.bpf.pin import DEFAULT_BPFFS
from probe.bpf.spec import MAPS_SECTION, read_object
from probe.errors import KernelError, ObjectError, permission_error

SUPPORTED_PROG_TYPES = (BPF_PROG_TYPE_XDP, BPF_PROG_TYPE_SCHED_CLS)
_USE_LIBBPF = "use --loader libbpf"
_EXTERN_WORDS = {"kconfig": "__kconfig", "ksym": "__ksym", "kfunc": "__ksym function, a kfunc"}
# Map types libbpf creates without BTF: the kernel takes none for them.
_NO_BTF_MAP_TYPES = frozenset((BPF_MAP_TYPE_PERF_EVENT_ARRAY, BPF_MAP_TYPE_CGROUP_ARRAY, BPF_MAP_TYPE_STACK_TRACE,
                               BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS, BPF_MAP_TYPE_DEVMAP,
                               BPF_MAP_TYPE_DEVMAP_HASH, BPF_MAP_TYPE_CPUMAP, BPF_MAP_TYPE_XSKMAP,
                               BPF_MAP_TYPE_SOCKMAP, BPF_MAP_TYPE_SOCKHASH, BPF_MAP_TYPE_QUEUE, BPF_MAP_TYPE_STACK))
_RINGBUF_TYPES = (BPF_MAP_TYPE_RINGBUF, BPF_MAP_TYPE_USER_RINGBUF)
# What a pinned map must share with the declaration to stand in for it (libbpf's map_is_reuse_compat):
# (struct bpf_map_info field, MapSpec attribute).
_PIN_FIELDS = (("type", "type"), ("key_size", "key_size"), ("value_size", "value_size"),
               ("max_entries", "max_entries"), ("map_flags", "flags"))
# Flags the kernel sets itself on a map type, which a pinned map has and its declaration lacks (libbpf 1.x then
# refuses to reuse the devmaps it pinned; cilium/ebpf ignores the flag, as here).
_KERNEL_MAP_FLAGS = {BPF_MAP_TYPE_DEVMAP: BPF_F_RDONLY_PROG, BPF_MAP_TYPE_DEVMAP_HASH: BPF_F_RDONLY_PROG}
_LOG_SIZE = 1 << 16
_MAX_LOG_SIZE = 1 << 24


def check_supported(spec):
    """Raise the ObjectError a native load of `spec` raises for what this loader does not do; no system call.

    The first of: the object's byte order; struct_ops sections; externs; map-in-maps, maps with initial
    values, with map_extra, struct_ops maps; programs (loaded by default) of a section libbpf 1.x does not know
    or of a type other than xdp and sched_cls; CO-RE relocations.
    """
    if spec.byteorder != sys.byteorder:
        raise ObjectError("the object is %s-endian, this machine %s-endian" % (spec.byteorder, sys.byteorder),
                          hint="build it for this machine (clang -target bpf)")
    if spec.struct_ops:
        raise ObjectError("the object declares struct_ops (section '%s'), which the native loader does not "
                          "support" % spec.struct_ops[0], hint=_USE_LIBBPF)
    if spec.externs:
        extern = spec.externs[0]
        raise ObjectError("the object uses extern '%s' (%s), which the native loader does not resolve" %
                          (extern.name, _EXTERN_WORDS.get(extern.kind, "of no known kind")), hint=_USE_LIBBPF)
    for m in spec.maps.values():
        _check_map(m)
    for program in spec.programs.values():
        if not program.autoload:
            continue
        if not program.known_section:
            raise ObjectError("program '%s': section '%s' names no program type libbpf 1.x knows" %
                              (program.name, program.section),
                              hint="name the section as libbpf does, e.g. SEC(\"xdp\") or SEC(\"tc\")")
        if program.prog_type not in SUPPORTED_PROG_TYPES:
            raise ObjectError("program '%s' is a %s program (section '%s'); the native loader loads xdp and "
                              "sched_cls programs" % (program.name, _name_of(PROG_TYPES, program.prog_type),
                                                      program.section), hint=_USE_LIBBPF)
    if spec.core_relocations:
        relo = spec.core_relocations[0]
        raise ObjectError("%s '%s' uses a CO-RE relocation (%s) of '%s'%s, which the native loader does not "
                          "support" % ("subprogram" if relo.function in spec.subprograms else "program",
                                       relo.function, relo.kind, relo.type,
                                       ".'%s'" % relo.member if relo.member else ""), hint=_USE_LIBBPF)


def _check_map(m):
    what = "map '%s'" % m.name
    if m.type in (BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS):
        raise ObjectError("%s is a map-in-map (%s), which the native loader does not create" %
                          (what, _name_of(MAP_TYPES, m.type)), hint=_USE_LIBBPF)
    if m.type == BPF_MAP_TYPE_STRUCT_OPS:
        raise ObjectError("%s is a struct_ops map, which the native loader does not create" % what, hint=_USE_LIBBPF)
    if m.values:
        raise ObjectError("%s has initial values (slot %d: '%s'), which the native loader does not set" %
                          ((what,) + m.values[0]), hint=_USE_LIBBPF)
    if m.map_extra:
        raise ObjectError("%s sets map_extra (%d), which the native loader does not pass" % (what, m.map_extra),
                          hint=_USE_LIBBPF)


def _name_of(names, number):
    return names[number] if 0 <= number < len(names) else "type %d" % number


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


class _Made(object):
    """The fds and pins a load has made so far: undone if the load does not finish."""

    def __init__(self):
        self.fds = []
        self.pins = []

    def fd(self, fd):
        """Keep an fd (None passes) to close on failure; returns it."""
        if fd is not None:
            self.fds.append(fd)
        return fd

    def close(self, fd):
        self.fds.remove(fd)
        os.close(fd)

    def undo(self):
        for fd in reversed(self.fds):
            os.close(fd)
        for path in self.pins:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.fds, self.pins = [], []


def _name(name):
    """An object name as the kernel takes it: 15 bytes of letters, digits, '_' and '.' (BPF_OBJ_NAME_LEN)."""
    return "".join(c if c.isalnum() or c in "_." else "_" for c in name).encode("ascii", "replace")[:15]


def _load_btf(blob):
    """The fd of the object's BTF in the kernel, or None where the kernel does not take it."""
    data = ctypes.create_string_buffer(blob, len(blob))
    try:
        return syscall.bpf(BPF_BTF_LOAD, syscall.BtfLoadAttr(btf=ctypes.addressof(data), btf_size=len(blob)))
    except KernelError as e:
        perm = permission_error(e)
        if perm:
            raise perm
        log.debug("native: the kernel does not take the object's BTF (%s); loading without it", e.message)
        return None


def _max_entries(spec):
    """max_entries as libbpf creates the map: a ring buffer's a power-of-2 number of pages (rounded up), a
    perf event array of 0 entries one per possible CPU."""
    if spec.type in _RINGBUF_TYPES and spec.max_entries:
        page = resource.getpagesize()
        pages = spec.max_entries // page
        if spec.max_entries % page == 0 and pages & (pages - 1) == 0:
            return spec.max_entries
        size = page
        while size <= spec.max_entries:
            size *= 2
        return size if size <= 0xffffffff else spec.max_entries  # too large: the kernel says no
    if spec.type == BPF_MAP_TYPE_PERF_EVENT_ARRAY and not spec.max_entries:
        return possible_cpus()
    return spec.max_entries


def _create_map(spec, btf_fd, made):
    """A new map for the spec, holding its initial value (a .rodata map frozen after)."""
    try:
        fd = made.fd(_create_map_with_btf(spec, btf_fd))
    except KernelError as e:
        raise (permission_error(e) or e.wrap("cannot create map %s" % spec.name)) from e
    if spec.section != MAPS_SECTION:
        try:
            syscall.map_update(fd, b"\0" * 4, spec.initial or b"\0" * spec.value_size)
            if spec.read_only:
                syscall.map_freeze(fd)
        except KernelError as e:
            raise (permission_error(e) or e.wrap("cannot set the initial value of map %s" % spec.name)) from e
    return fd


def _create_map_with_btf(spec, btf_fd):
    """Create a map, typed with its BTF where the kernel takes it (else without, as libbpf)."""
    attr = syscall.MapCreateAttr(map_type=spec.type, key_size=spec.key_size, value_size=spec.value_size,
                                 max_entries=_max_entries(spec), map_flags=spec.flags, numa_node=spec.numa_node,
                                 map_name=_name(spec.name))
    if btf_fd is not None and (spec.btf_key_type_id or spec.btf_value_type_id) and \
            spec.type not in _NO_BTF_MAP_TYPES:
        attr.btf_fd, attr.btf_key_type_id, attr.btf_value_type_id = \
            btf_fd, spec.btf_key_type_id, spec.btf_value_type_id
        try:
            return syscall.map_create(attr)
        except KernelError as e:
            if permission_error(e):
                raise
            log.debug("native: map %s refused its BTF types (%s); creating it without", spec.name, e.message)
            attr.btf_fd = attr.btf_key_type_id = attr.btf_value_type_id = 0
    return syscall.map_create(attr)


def _pinned_map(spec, btf_fd, pin_root, made):
    """The map pinned by name at pin_root/NAME where it fits the spec, else a new one pinned there; as
    libbpf, once more if another loader pinned one in between."""
    path = os.path.join(pin_root, spec.name)
    for attempt in range(2):
        fd = _reuse_pinned(spec, path, made)
        if fd is not None:
            return fd
        fd = _create_map(spec, btf_fd, made)
        try:
            os.mkdir(os.path.dirname(path), 0o700)  # as libbpf: the folder, not its parents
        except FileExistsError:
            pass
        except OSError as e:
            raise ObjectError("cannot pin map %s at %s: %s" % (spec.name, path, e.strerror), errno=e.errno)
        try:
            syscall.obj_pin(fd, path)
        except KernelError as e:
            made.close(fd)
            if e.errno == errno.EEXIST and attempt == 0:
                continue
            raise (permission_error(e) or e.wrap("cannot pin map %s at %s" % (spec.name, path))) from e
        made.pins.append(path)
        return fd


def _reuse_pinned(spec, path, made):
    """An fd of the map pinned at path, if any; one that differs from the spec raises ObjectError."""
    try:
        fd = made.fd(syscall.obj_get(path))
    except KernelError as e:
        if e.errno == errno.ENOENT:
            return None
        raise (permission_error(e) or e.wrap("cannot open the map pinned at %s" % path)) from e
    info = syscall.map_info(fd)
    pinned = {field: getattr(info, field) for field, _ in _PIN_FIELDS}
    declared = {field: getattr(spec, attr) for field, attr in _PIN_FIELDS}
    declared["max_entries"] = _max_entries(spec)
    pinned["map_flags"] &= ~_KERNEL_MAP_FLAGS.get(spec.type, 0)
    declared["map_flags"] &= ~_KERNEL_MAP_FLAGS.get(spec.type, 0)
    differences = ["%s %d, declared %d" % (field, pinned[field], declared[field])
                   for field, _ in _PIN_FIELDS if pinned[field] != declared[field]]
    if differences:
        raise ObjectError("map %s: the map pinned at %s differs: %s" % (spec.name, path, ", ".join(differences)),
                          hint="remove the pin (rm %s) or declare the map as pinned" % path, errno=errno.EINVAL)
    log.debug("native: map %s reuses the map pinned at %s", spec.name, path)
    return fd


def _relocated(program, map_fds):
    """The program's instructions with each map reference (marked by the spec) given that map's fd."""
    insns = bytearray(program.instructions)
    for index, map_name in program.map_relocations:
        at = index * BPF_INSN_SIZE
        insns[at + 4:at + 8] = map_fds[map_name].to_bytes(4, sys.byteorder, signed=True)
    return bytes(insns)


def _with_btf(attr, program, btf_fd, buffers):
    """A copy of the load attr that describes the program with its BTF: functions and source lines."""
    described = syscall.ProgLoadAttr.from_buffer_copy(attr)
    described.prog_btf_fd = btf_fd
    for what in ("func_info", "line_info"):
        if getattr(program, what) is None:
            continue
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
                                prog_name=_name(program.name), prog_flags=program.prog_flags,
                                expected_attach_type=program.expected_attach_type)
    buffers = []
    attempts = [attr]
    if btf_fd is not None and (program.func_info or program.line_info):
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

    def load_bytes(self, data, reuse_maps=None, pin_root=None, max_entries=None, programs=None):
        try:
            spec = read_object(bytes(data))
        except ObjectError as e:
            raise e.wrap("cannot read the object") from e
        for name, program in spec.programs.items():
            if programs is not None and name not in programs:
                program.autoload = False
        check_supported(spec)
        raise_memlock_limit()
        made = _Made()
        try:  # KeyboardInterrupt too: what was made is undone
            btf_fd = made.fd(_load_btf(spec.btf)) if spec.btf else None
            maps, programs = {}, {}
            for name, map_spec in spec.maps.items():
                if max_entries and name in max_entries:
                    map_spec.max_entries = max_entries[name]
                if reuse_maps and name in reuse_maps:
                    maps[name] = made.fd(os.dup(reuse_maps[name]))  # this object's own fd of the kernel's map
                elif map_spec.pinning == LIBBPF_PIN_BY_NAME:
                    maps[name] = _pinned_map(map_spec, btf_fd, pin_root or DEFAULT_BPFFS, made)
                else:
                    maps[name] = _create_map(map_spec, btf_fd, made)
            for name, program in spec.programs.items():
                if program.autoload:
                    programs[name] = made.fd(_load_program(program, _relocated(program, maps), spec.license or "",
                                                           btf_fd))
            return NativeObject(programs, maps, btf_fd, made.pins)
        except BaseException:
            made.undo()
            raise
