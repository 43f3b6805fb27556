"""The bpf(2) system call and the attr structs of the commands the probe uses, through libc alone."""
import ctypes
import errno
import os

from probe.bpf.constants import (BPF_COMMAND_NAMES, BPF_ENABLE_STATS, BPF_STATS_RUN_TIME, BPF_F_REPLACE, BPF_LINK_CREATE, BPF_LINK_DETACH,
                                 BPF_LINK_GET_FD_BY_ID, BPF_LINK_GET_NEXT_ID, BPF_LINK_TYPE_XDP, BPF_LINK_UPDATE,
                                 BPF_MAP_CREATE, BPF_MAP_DELETE_ELEM, BPF_MAP_FREEZE, BPF_MAP_GET_NEXT_KEY,
                                 BPF_MAP_LOOKUP_BATCH, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_OBJ_GET,
                                 BPF_OBJ_GET_INFO_BY_FD,
                                 BPF_OBJ_PIN, BPF_PROG_GET_FD_BY_ID, BPF_PROG_LOAD, BPF_PROG_QUERY, BPF_PROG_TEST_RUN,
                                 BPF_XDP)
from probe.errors import KernelError

BPF_MPROG_MAX = 64  # the most programs a TCX hook holds (kernel/bpf/mprog.c)

# bpf(2) syscall numbers by machine (asm/unistd.h).
_SYS_BPF = {
    "x86_64": 321,
    "aarch64": 280,
    "riscv64": 280,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
    "i686": 357,
    "i386": 357,
    "armv7l": 386,
}

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class MapCreateAttr(ctypes.Structure):
    """union bpf_attr, BPF_MAP_CREATE."""
    _fields_ = [
        ("map_type", _u32), ("key_size", _u32), ("value_size", _u32), ("max_entries", _u32),
        ("map_flags", _u32), ("inner_map_fd", _u32), ("numa_node", _u32), ("map_name", ctypes.c_char * 16),
        ("map_ifindex", _u32), ("btf_fd", _u32), ("btf_key_type_id", _u32), ("btf_value_type_id", _u32),
    ]


class ProgLoadAttr(ctypes.Structure):
    """union bpf_attr, BPF_PROG_LOAD, up to attach_btf_id."""
    _fields_ = [
        ("prog_type", _u32), ("insn_cnt", _u32), ("insns", _u64), ("license", _u64),
        ("log_level", _u32), ("log_size", _u32), ("log_buf", _u64), ("kern_version", _u32),
        ("prog_flags", _u32), ("prog_name", ctypes.c_char * 16), ("prog_ifindex", _u32),
        ("expected_attach_type", _u32), ("prog_btf_fd", _u32), ("func_info_rec_size", _u32),
        ("func_info", _u64), ("func_info_cnt", _u32), ("line_info_rec_size", _u32), ("line_info", _u64),
        ("line_info_cnt", _u32), ("attach_btf_id", _u32),
    ]


class BtfLoadAttr(ctypes.Structure):
    """union bpf_attr, BPF_BTF_LOAD."""
    _fields_ = [("btf", _u64), ("btf_log_buf", _u64), ("btf_size", _u32), ("btf_log_size", _u32),
                ("btf_log_level", _u32)]


class MapElemAttr(ctypes.Structure):
    """union bpf_attr, BPF_MAP_*_ELEM commands."""
    _fields_ = [("map_fd", _u32), ("_pad", _u32), ("key", _u64), ("value", _u64), ("flags", _u64)]


class BatchAttr(ctypes.Structure):
    """union bpf_attr, BPF_MAP_*_BATCH commands (batch)."""
    _fields_ = [("in_batch", _u64), ("out_batch", _u64), ("keys", _u64), ("values", _u64), ("count", _u32),
                ("map_fd", _u32), ("elem_flags", _u64), ("flags", _u64)]


class TestRunAttr(ctypes.Structure):
    """union bpf_attr, BPF_PROG_TEST_RUN (test)."""
    _fields_ = [
        ("prog_fd", _u32), ("retval", _u32), ("data_size_in", _u32), ("data_size_out", _u32),
        ("data_in", _u64), ("data_out", _u64), ("repeat", _u32), ("duration", _u32),
        ("ctx_size_in", _u32), ("ctx_size_out", _u32), ("ctx_in", _u64), ("ctx_out", _u64),
        ("flags", _u32), ("cpu", _u32), ("batch_size", _u32), ("_pad", _u32),
    ]


class GetIdAttr(ctypes.Structure):
    """union bpf_attr, BPF_*_GET_FD_BY_ID and BPF_*_GET_NEXT_ID."""
    _fields_ = [("id", _u32), ("next_id", _u32), ("open_flags", _u32)]


class InfoAttr(ctypes.Structure):
    """union bpf_attr, BPF_OBJ_GET_INFO_BY_FD (info)."""
    _fields_ = [("bpf_fd", _u32), ("info_len", _u32), ("info", _u64)]


class LinkCreateAttr(ctypes.Structure):
    """union bpf_attr, BPF_LINK_CREATE (link_create), the fields XDP and TCX use."""
    _fields_ = [("prog_fd", _u32), ("target_ifindex", _u32), ("attach_type", _u32), ("flags", _u32)]


class ProgQueryAttr(ctypes.Structure):
    """union bpf_attr, BPF_PROG_QUERY (query), up to revision, which the kernel writes back whatever the size."""
    _fields_ = [("target_ifindex", _u32), ("attach_type", _u32), ("query_flags", _u32), ("attach_flags", _u32),
                ("prog_ids", _u64), ("count", _u32), ("_pad", _u32), ("prog_attach_flags", _u64),
                ("link_ids", _u64), ("link_attach_flags", _u64), ("revision", _u64)]


class LinkUpdateAttr(ctypes.Structure):
    """union bpf_attr, BPF_LINK_UPDATE (link_update)."""
    _fields_ = [("link_fd", _u32), ("new_prog_fd", _u32), ("flags", _u32), ("old_prog_fd", _u32)]


class ObjAttr(ctypes.Structure):
    """union bpf_attr, BPF_OBJ_PIN and BPF_OBJ_GET."""
    _fields_ = [("pathname", _u64), ("bpf_fd", _u32), ("file_flags", _u32)]


class LinkDetachAttr(ctypes.Structure):
    """union bpf_attr, BPF_LINK_DETACH (link_detach)."""
    _fields_ = [("link_fd", _u32)]


class ProgInfo(ctypes.Structure):
    """struct bpf_prog_info, up to run_cnt (5.1: run-time statistics; older kernels leave the tail zero)."""
    _fields_ = [
        ("type", _u32), ("id", _u32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", _u32), ("xlated_prog_len", _u32),
        ("jited_prog_insns", _u64), ("xlated_prog_insns", _u64),
        ("load_time", _u64), ("created_by_uid", _u32), ("nr_map_ids", _u32), ("map_ids", _u64),
        ("name", ctypes.c_char * 16), ("ifindex", _u32), ("gpl_compatible", _u32), ("netns_dev", _u64),
        ("netns_ino", _u64), ("nr_jited_ksyms", _u32), ("nr_jited_func_lens", _u32), ("jited_ksyms", _u64),
        ("jited_func_lens", _u64), ("btf_id", _u32), ("func_info_rec_size", _u32), ("func_info", _u64),
        ("nr_func_info", _u32), ("nr_line_info", _u32), ("line_info", _u64), ("jited_line_info", _u64),
        ("nr_jited_line_info", _u32), ("line_info_rec_size", _u32), ("jited_line_info_rec_size", _u32),
        ("nr_prog_tags", _u32), ("prog_tags", _u64), ("run_time_ns", _u64), ("run_cnt", _u64),
    ]


class MapInfo(ctypes.Structure):
    """struct bpf_map_info, up to its name."""
    _fields_ = [("type", _u32), ("id", _u32), ("key_size", _u32), ("value_size", _u32), ("max_entries", _u32),
                ("map_flags", _u32), ("name", ctypes.c_char * 16)]


class LinkInfo(ctypes.Structure):
    """struct bpf_link_info, with the xdp and tcx members of its union (xdp has the ifindex alone)."""
    _fields_ = [("type", _u32), ("id", _u32), ("prog_id", _u32), ("_pad", _u32), ("ifindex", _u32),
                ("attach_type", _u32), ("_union", ctypes.c_uint8 * 24)]


libc = ctypes.CDLL(None, use_errno=True)  # the process's C library, for every module that calls into it
_syscall = libc.syscall
_syscall.restype = ctypes.c_long
_MACHINE = os.uname().machine
_NR_BPF = _SYS_BPF.get(_MACHINE)


def bpf(cmd, attr):
    """Run bpf(cmd, &attr) and return its result; a failure raises KernelError with the errno."""
    if _NR_BPF is None:
        raise KernelError("no bpf(2) syscall number known for %s" % _MACHINE, errno=errno.ENOSYS)
    ret = _syscall(ctypes.c_long(_NR_BPF), ctypes.c_int(cmd), ctypes.byref(attr),
                   ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise KernelError("%s: %s" % (BPF_COMMAND_NAMES.get(cmd, cmd), os.strerror(err)), errno=err)
    return ret


_PROG_LOAD_TRIES = 5


def prog_load(attr):
    """BPF_PROG_LOAD, retried on EAGAIN as libbpf and cilium/ebpf do (a signal can interrupt the verifier)."""
    for attempt in range(_PROG_LOAD_TRIES):
        try:
            return bpf(BPF_PROG_LOAD, attr)
        except KernelError as e:
            if e.errno != errno.EAGAIN or attempt == _PROG_LOAD_TRIES - 1:
                raise


def map_create(attr):
    """A new map's fd."""
    return bpf(BPF_MAP_CREATE, attr)


def map_lookup(map_fd, key, value_size):
    """The value stored under `key` (bytes) in a map, as bytes of value_size."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    bpf(BPF_MAP_LOOKUP_ELEM, MapElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v)))
    return v.raw


def map_update(map_fd, key, value, flags=0):
    """Store `value` under `key` (both bytes) in a map."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    bpf(BPF_MAP_UPDATE_ELEM, MapElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v),
                                         flags=flags))


def map_delete(map_fd, key):
    """Delete `key` (bytes) from a map; KernelError ENOENT where it is not."""
    k = ctypes.create_string_buffer(key, len(key))
    bpf(BPF_MAP_DELETE_ELEM, MapElemAttr(map_fd=map_fd, key=ctypes.addressof(k)))


def map_next_key(map_fd, key, key_size):
    """The key after `key` (None: the first), or None after the last."""
    nxt = ctypes.create_string_buffer(key_size)
    k = ctypes.create_string_buffer(key, len(key)) if key is not None else None
    try:
        bpf(BPF_MAP_GET_NEXT_KEY, MapElemAttr(map_fd=map_fd, key=ctypes.addressof(k) if k else 0,
                                              value=ctypes.addressof(nxt)))
    except KernelError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return nxt.raw


def map_lookup_batch(map_fd, key_size, value_size, count, after=None, total=None):
    """[(key, value)] of the entries following key `after` (from the first, without it), `total` of them at
    most (to the end, without it), read in BPF_MAP_LOOKUP_BATCH (5.6+) calls of up to `count` entries."""
    out = []
    keys = ctypes.create_string_buffer(key_size * count)
    values = ctypes.create_string_buffer(value_size * count)
    in_batch = ctypes.create_string_buffer(max(key_size, 8))
    out_batch = ctypes.create_string_buffer(max(key_size, 8))
    attr = BatchAttr(in_batch=0, out_batch=ctypes.addressof(out_batch), keys=ctypes.addressof(keys),
                     values=ctypes.addressof(values), map_fd=map_fd)
    if after is not None:  # the walk goes on from the key of in_batch, as from a previous call's out_batch
        ctypes.memmove(in_batch, after, key_size)
        attr.in_batch = ctypes.addressof(in_batch)
    while True:
        attr.count = count if total is None else min(count, total - len(out))
        try:
            bpf(BPF_MAP_LOOKUP_BATCH, attr)
            done = False
        except KernelError as e:
            if e.errno != errno.ENOENT:
                raise
            done = True  # the last entries come with ENOENT
        for i in range(attr.count):
            out.append((keys.raw[i * key_size:(i + 1) * key_size], values.raw[i * value_size:(i + 1) * value_size]))
        if done or attr.count == 0 or (total is not None and len(out) >= total):
            return out
        ctypes.memmove(in_batch, out_batch, len(out_batch))
        attr.in_batch = ctypes.addressof(in_batch)


def wait_for_programs(outer_fd, inner_fd):
    """Return once every BPF program that was running has finished: updating a map-in-map (outer_fd, an
    ARRAY_OF_MAPS of one entry made with inner_fd as its template) waits out an RCU grace period, so that user
    space knows no program still uses what it saw before (kernel/bpf/syscall.c, maybe_wait_bpf_programs)."""
    map_update(outer_fd, bytes(ctypes.c_uint32(0)), bytes(ctypes.c_uint32(inner_fd)))


def map_freeze(map_fd):
    """Make a map read-only to user space from now on (programs still read it)."""
    bpf(BPF_MAP_FREEZE, MapElemAttr(map_fd=map_fd))


def prog_test_run(prog_fd, data, repeat=1):
    """Run a program on one frame `repeat` times; return (its return value, mean ns per run)."""
    buf = ctypes.create_string_buffer(data, len(data))
    attr = TestRunAttr(prog_fd=prog_fd, data_size_in=len(data), data_in=ctypes.addressof(buf), repeat=repeat)
    bpf(BPF_PROG_TEST_RUN, attr)
    return attr.retval, attr.duration


def _info(fd, info):
    bpf(BPF_OBJ_GET_INFO_BY_FD, InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)))
    return info


def prog_info(fd):
    """struct bpf_prog_info of a program fd."""
    return _info(fd, ProgInfo())


def map_info(fd):
    """struct bpf_map_info of a map fd."""
    return _info(fd, MapInfo())


def link_info(fd):
    """struct bpf_link_info of a link fd."""
    return _info(fd, LinkInfo())


class EnableStatsAttr(ctypes.Structure):
    """union bpf_attr, BPF_ENABLE_STATS (enable_stats)."""
    _fields_ = [("type", _u32)]


def enable_run_time_stats():
    """An fd that keeps the kernel's BPF run-time statistics on while it is open (5.8+)."""
    return bpf(BPF_ENABLE_STATS, EnableStatsAttr(type=BPF_STATS_RUN_TIME))


def prog_fd_by_id(prog_id):
    """A new fd of the loaded program with this id."""
    return bpf(BPF_PROG_GET_FD_BY_ID, GetIdAttr(id=prog_id))


def prog_name_by_id(prog_id):
    """The name of the loaded program with this id."""
    fd = prog_fd_by_id(prog_id)
    try:
        return prog_info(fd).name.decode("ascii", "replace")
    finally:
        os.close(fd)


def link_create_xdp(prog_fd, ifindex, flags):
    """A new XDP bpf_link fd: the program stays attached while the fd is open."""
    return bpf(BPF_LINK_CREATE, LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex,
                                               attach_type=BPF_XDP, flags=flags))


def link_create_tcx(prog_fd, ifindex, attach_type):
    """A new TCX bpf_link fd (BPF_TCX_INGRESS or BPF_TCX_EGRESS, kernel 6.6+), the program placed after those
    already on the hook: it stays attached while the fd is open."""
    return bpf(BPF_LINK_CREATE, LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type))


def tcx_programs(ifindex, attach_type):
    """[(program id, link id or 0)] of a TCX hook, in the order they run (BPF_PROG_QUERY)."""
    prog_ids = (_u32 * BPF_MPROG_MAX)()
    link_ids = (_u32 * BPF_MPROG_MAX)()
    attr = ProgQueryAttr(target_ifindex=ifindex, attach_type=attach_type, prog_ids=ctypes.addressof(prog_ids),
                         count=BPF_MPROG_MAX, link_ids=ctypes.addressof(link_ids))
    bpf(BPF_PROG_QUERY, attr)
    return [(prog_ids[i], link_ids[i]) for i in range(attr.count)]


def link_fd_by_id(link_id):
    """A new fd of the bpf_link with this id."""
    return bpf(BPF_LINK_GET_FD_BY_ID, GetIdAttr(id=link_id))


def detach_xdp_links(ifindex, prog_id):
    """Detach the XDP bpf_links that run program `prog_id` on interface `ifindex`, any process's (their fds
    stay open but defunct); returns how many there were.

    A link says its ifindex but not its network namespace: the program id, read from this namespace's
    interface, keeps a namesake interface in another namespace out of it.
    """
    detached = 0
    attr = GetIdAttr(id=0)
    while True:
        try:
            bpf(BPF_LINK_GET_NEXT_ID, attr)
        except KernelError as e:
            if e.errno == errno.ENOENT:  # no more links
                return detached
            raise
        attr.id = attr.next_id
        try:
            fd = link_fd_by_id(attr.id)
        except KernelError:
            continue  # gone meanwhile
        try:
            info = link_info(fd)
            if info.type == BPF_LINK_TYPE_XDP and info.ifindex == ifindex and info.prog_id == prog_id:
                link_detach(fd)
                detached += 1
        finally:
            os.close(fd)


def link_update(link_fd, new_prog_fd, old_prog_fd=None):
    """Swap the program a link runs, atomically: if it still runs old_prog_fd, unless that is None."""
    bpf(BPF_LINK_UPDATE, LinkUpdateAttr(link_fd=link_fd, new_prog_fd=new_prog_fd,
                                        flags=0 if old_prog_fd is None else BPF_F_REPLACE,
                                        old_prog_fd=old_prog_fd or 0))


def obj_pin(fd, path):
    """Pin a map, program or link at a path on a bpffs."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    bpf(BPF_OBJ_PIN, ObjAttr(pathname=ctypes.addressof(name), bpf_fd=fd))


def obj_get(path):
    """A new fd of the object pinned at a path."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return bpf(BPF_OBJ_GET, ObjAttr(pathname=ctypes.addressof(name)))


def link_detach(link_fd):
    """End a link: its program leaves the hook, even while the link is pinned or held elsewhere."""
    bpf(BPF_LINK_DETACH, LinkDetachAttr(link_fd=link_fd))

