"""ObjectSpec: the maps, global data, programs and externs of a BPF ELF object, read as libbpf 1.x opens one,
and checked, before anything is loaded.

Programs come linked as libbpf links them (bpf_object__relocate): each with the subprograms it calls appended,
its calls and callback addresses pointing at them, their func and line info carried along, and every map
reference marked (src_reg) for the loader, which only writes the maps' fds.
"""
import struct

from probe.bpf import btf as _btf
from probe.bpf import elf
from probe.bpf.constants import (ATTACH_TYPES, BPF_CALL, BPF_F_MMAPABLE, BPF_F_RDONLY_PROG, BPF_F_SLEEPABLE,
                                 BPF_F_XDP_HAS_FRAGS, BPF_INSN_SIZE, BPF_LD_IMM64, BPF_MAP_TYPE_ARRAY,
                                 BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS, BPF_MAP_TYPE_PROG_ARRAY,
                                 BPF_PSEUDO_CALL, BPF_PSEUDO_FUNC, BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE,
                                 CORE_RELO_KINDS, LIBBPF_PIN_BY_NAME, LIBBPF_PIN_NONE, PROG_TYPES)
from probe.errors import ObjectError

MAPS_SECTION = ".maps"
LICENSE_SECTION = "license"
BTF_SECTION = ".BTF"
BTF_EXT_SECTION = ".BTF.ext"
TEXT_SECTION = ".text"  # subprograms, called from programs
STRUCT_OPS_SECTIONS = (".struct_ops", ".struct_ops.link")
_EXTERN_KINDS = {".kconfig": "kconfig", ".ksyms": "ksym"}  # extern DATASEC -> what its externs are
_SHN_LORESERVE = 0xff00  # symbols from here on (SHN_ABS, SHN_COMMON...) are in no section
_S32 = (-1 << 31, 1 << 31)

_SLEEPABLE, _FRAGS = BPF_F_SLEEPABLE, BPF_F_XDP_HAS_FRAGS
# libbpf's section_defs (libbpf.c), in its order: (SEC() name, program type, expected attach type, prog_flags).
# A name ending in "+" matches itself or itself and "/..."; one ending in "/" any name it begins; others
# only themselves. A leading "?" in a section name (do not load by default) is not part of the match.
SECTION_DEFS = (
    ("socket", "socket_filter", None, 0),
    ("sk_reuseport/migrate", "sk_reuseport", "sk_reuseport_select_or_migrate", 0),
    ("sk_reuseport", "sk_reuseport", "sk_reuseport_select", 0),
    ("kprobe+", "kprobe", None, 0),
    ("uprobe+", "kprobe", None, 0),
    ("uprobe.s+", "kprobe", None, _SLEEPABLE),
    ("kretprobe+", "kprobe", None, 0),
    ("uretprobe+", "kprobe", None, 0),
    ("uretprobe.s+", "kprobe", None, _SLEEPABLE),
    ("kprobe.multi+", "kprobe", "trace_kprobe_multi", 0),
    ("kretprobe.multi+", "kprobe", "trace_kprobe_multi", 0),
    ("uprobe.multi+", "kprobe", "trace_uprobe_multi", 0),
    ("uretprobe.multi+", "kprobe", "trace_uprobe_multi", 0),
    ("uprobe.multi.s+", "kprobe", "trace_uprobe_multi", _SLEEPABLE),
    ("uretprobe.multi.s+", "kprobe", "trace_uprobe_multi", _SLEEPABLE),
    ("ksyscall+", "kprobe", None, 0),
    ("kretsyscall+", "kprobe", None, 0),
    ("usdt+", "kprobe", None, 0),
    ("usdt.s+", "kprobe", None, _SLEEPABLE),
    ("tc/ingress", "sched_cls", "tcx_ingress", 0),
    ("tc/egress", "sched_cls", "tcx_egress", 0),
    ("tcx/ingress", "sched_cls", "tcx_ingress", 0),
    ("tcx/egress", "sched_cls", "tcx_egress", 0),
    ("tc", "sched_cls", None, 0),
    ("classifier", "sched_cls", None, 0),
    ("action", "sched_act", None, 0),
    ("netkit/primary", "sched_cls", "netkit_primary", 0),
    ("netkit/peer", "sched_cls", "netkit_peer", 0),
    ("tracepoint+", "tracepoint", None, 0),
    ("tp+", "tracepoint", None, 0),
    ("raw_tracepoint+", "raw_tracepoint", None, 0),
    ("raw_tp+", "raw_tracepoint", None, 0),
    ("raw_tracepoint.w+", "raw_tracepoint_writable", None, 0),
    ("raw_tp.w+", "raw_tracepoint_writable", None, 0),
    ("tp_btf+", "tracing", "trace_raw_tp", 0),
    ("fentry+", "tracing", "trace_fentry", 0),
    ("fmod_ret+", "tracing", "modify_return", 0),
    ("fexit+", "tracing", "trace_fexit", 0),
    ("fentry.s+", "tracing", "trace_fentry", _SLEEPABLE),
    ("fmod_ret.s+", "tracing", "modify_return", _SLEEPABLE),
    ("fexit.s+", "tracing", "trace_fexit", _SLEEPABLE),
    ("freplace+", "ext", None, 0),
    ("lsm+", "lsm", "lsm_mac", 0),
    ("lsm.s+", "lsm", "lsm_mac", _SLEEPABLE),
    ("lsm_cgroup+", "lsm", "lsm_cgroup", 0),
    ("iter+", "tracing", "trace_iter", 0),
    ("iter.s+", "tracing", "trace_iter", _SLEEPABLE),
    ("syscall", "syscall", None, _SLEEPABLE),
    ("xdp.frags/devmap", "xdp", "xdp_devmap", _FRAGS),
    ("xdp/devmap", "xdp", "xdp_devmap", 0),
    ("xdp.frags/cpumap", "xdp", "xdp_cpumap", _FRAGS),
    ("xdp/cpumap", "xdp", "xdp_cpumap", 0),
    ("xdp.frags", "xdp", "xdp", _FRAGS),
    ("xdp", "xdp", "xdp", 0),
    ("perf_event", "perf_event", None, 0),
    ("lwt_in", "lwt_in", None, 0),
    ("lwt_out", "lwt_out", None, 0),
    ("lwt_xmit", "lwt_xmit", None, 0),
    ("lwt_seg6local", "lwt_seg6local", None, 0),
    ("sockops", "sock_ops", "cgroup_sock_ops", 0),
    ("sk_skb/stream_parser", "sk_skb", "sk_skb_stream_parser", 0),
    ("sk_skb/stream_verdict", "sk_skb", "sk_skb_stream_verdict", 0),
    ("sk_skb", "sk_skb", None, 0),
    ("sk_msg", "sk_msg", "sk_msg_verdict", 0),
    ("lirc_mode2", "lirc_mode2", "lirc_mode2", 0),
    ("flow_dissector", "flow_dissector", "flow_dissector", 0),
    ("cgroup_skb/ingress", "cgroup_skb", "cgroup_inet_ingress", 0),
    ("cgroup_skb/egress", "cgroup_skb", "cgroup_inet_egress", 0),
    ("cgroup/skb", "cgroup_skb", None, 0),
    ("cgroup/sock_create", "cgroup_sock", "cgroup_inet_sock_create", 0),
    ("cgroup/sock_release", "cgroup_sock", "cgroup_inet_sock_release", 0),
    ("cgroup/sock", "cgroup_sock", "cgroup_inet_sock_create", 0),
    ("cgroup/post_bind4", "cgroup_sock", "cgroup_inet4_post_bind", 0),
    ("cgroup/post_bind6", "cgroup_sock", "cgroup_inet6_post_bind", 0),
    ("cgroup/bind4", "cgroup_sock_addr", "cgroup_inet4_bind", 0),
    ("cgroup/bind6", "cgroup_sock_addr", "cgroup_inet6_bind", 0),
    ("cgroup/connect4", "cgroup_sock_addr", "cgroup_inet4_connect", 0),
    ("cgroup/connect6", "cgroup_sock_addr", "cgroup_inet6_connect", 0),
    ("cgroup/connect_unix", "cgroup_sock_addr", "cgroup_unix_connect", 0),
    ("cgroup/sendmsg4", "cgroup_sock_addr", "cgroup_udp4_sendmsg", 0),
    ("cgroup/sendmsg6", "cgroup_sock_addr", "cgroup_udp6_sendmsg", 0),
    ("cgroup/sendmsg_unix", "cgroup_sock_addr", "cgroup_unix_sendmsg", 0),
    ("cgroup/recvmsg4", "cgroup_sock_addr", "cgroup_udp4_recvmsg", 0),
    ("cgroup/recvmsg6", "cgroup_sock_addr", "cgroup_udp6_recvmsg", 0),
    ("cgroup/recvmsg_unix", "cgroup_sock_addr", "cgroup_unix_recvmsg", 0),
    ("cgroup/getpeername4", "cgroup_sock_addr", "cgroup_inet4_getpeername", 0),
    ("cgroup/getpeername6", "cgroup_sock_addr", "cgroup_inet6_getpeername", 0),
    ("cgroup/getpeername_unix", "cgroup_sock_addr", "cgroup_unix_getpeername", 0),
    ("cgroup/getsockname4", "cgroup_sock_addr", "cgroup_inet4_getsockname", 0),
    ("cgroup/getsockname6", "cgroup_sock_addr", "cgroup_inet6_getsockname", 0),
    ("cgroup/getsockname_unix", "cgroup_sock_addr", "cgroup_unix_getsockname", 0),
    ("cgroup/sysctl", "cgroup_sysctl", "cgroup_sysctl", 0),
    ("cgroup/getsockopt", "cgroup_sockopt", "cgroup_getsockopt", 0),
    ("cgroup/setsockopt", "cgroup_sockopt", "cgroup_setsockopt", 0),
    ("cgroup/dev", "cgroup_device", "cgroup_device", 0),
    ("struct_ops+", "struct_ops", None, 0),
    ("struct_ops.s+", "struct_ops", None, _SLEEPABLE),
    ("sk_lookup", "sk_lookup", "sk_lookup", 0),
    ("netfilter", "netfilter", "netfilter", 0),
)

# Members of a BTF-defined map's struct that hold a number (`__uint`).
_MAP_INT_MEMBERS = ("type", "max_entries", "map_flags", "key_size", "value_size", "numa_node", "map_extra",
                    "pinning")


class MapSpec(object):
    """A map as the object declares it: in `.maps`, or a global data section (`section`) with its `initial`
    value (None: all zeros). BTF ids are 0 where untyped."""

    __slots__ = ("name", "type", "key_size", "value_size", "max_entries", "flags", "btf_key_type_id",
                 "btf_value_type_id", "pinning", "section", "initial", "numa_node", "map_extra", "values")

    def __init__(self, name, type=0, key_size=0, value_size=0, max_entries=0, flags=0, btf_key_type_id=0,
                 btf_value_type_id=0, section=MAPS_SECTION, initial=None):
        self.name = name
        self.type = type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.btf_key_type_id = btf_key_type_id
        self.btf_value_type_id = btf_value_type_id
        self.pinning = LIBBPF_PIN_NONE  # or LIBBPF_PIN_BY_NAME
        self.section = section  # ".maps", or the ELF section of a global data map
        self.initial = initial  # bytes of a global data map's value; None for zeros (.bss) and `.maps` maps
        self.numa_node = 0
        self.map_extra = 0
        self.values = []  # [(slot, symbol name)]: initial entries of a map-in-map or program array

    @property
    def read_only(self):
        """A .rodata map: read-only to programs, frozen once its initial value is written."""
        return self.section != MAPS_SECTION and self.section.startswith(".rodata")

    def __repr__(self):
        return "MapSpec(%s)" % ", ".join("%s=%r" % (f, getattr(self, f)) for f in self.__slots__ if f != "initial")


class ProgramSpec(object):
    """A program, linked: its instructions with its subprograms appended, and where they load a map's address."""

    __slots__ = ("name", "section", "prog_type", "expected_attach_type", "prog_flags", "known_section", "autoload",
                 "instructions", "map_relocations", "offset", "subprograms", "func_info", "line_info")

    def __init__(self, name, section, offset, instructions):
        self.name = name
        self.section = section
        self.offset = offset  # in its section, in bytes
        self.prog_type, self.expected_attach_type, self.prog_flags, self.known_section = section_def(section)
        self.autoload = not section.startswith("?")  # SEC("?xdp"): libbpf does not load it by default
        self.instructions = instructions  # bytes, 8 per instruction, the program's then its subprograms'
        # [(index in instructions, map name)], each on an ld_imm64 already marked BPF_PSEUDO_MAP_FD or, for
        # global data, BPF_PSEUDO_MAP_VALUE with the offset in its second half: the loader writes the fd.
        self.map_relocations = []
        self.subprograms = []  # names of the functions appended, in order
        # (record size, bytes) of the bpf_func_info and bpf_line_info records for BPF_PROG_LOAD, their
        # instruction offsets counted in instructions from the program's start; None without .BTF.ext.
        self.func_info = None
        self.line_info = None

    def __repr__(self):
        return "ProgramSpec(%r, section=%r, prog_type=%d, %d instructions, map_relocations=%r)" % (
            self.name, self.section, self.prog_type, len(self.instructions) // BPF_INSN_SIZE, self.map_relocations)


class CoreRelocation(object):
    """A CO-RE relocation record of .BTF.ext: which function, what kind, of what type and member."""

    __slots__ = ("function", "instruction", "kind", "type", "access", "member")

    def __init__(self, function, instruction, kind, type, access, member):
        self.function = function  # the program or subprogram holding the instruction
        self.instruction = instruction  # its index in that function
        self.kind = kind  # as libbpf names it: "byte_off", "field_exists", "type_size"...
        self.type = type  # "struct xdp_md"
        self.access = access  # the access string, "0:3"
        self.member = member  # what it names: "ingress_ifindex", "" for the type itself

    def __repr__(self):
        return "CoreRelocation(%r, %s of '%s'.'%s')" % (self.function, self.kind, self.type, self.member)


class Extern(object):
    """An undefined symbol the loader must resolve: kind "kconfig" (__kconfig), "ksym" (__ksym variable),
    "kfunc" (__ksym function), or None where the object's BTF does not say."""

    __slots__ = ("name", "kind", "weak")

    def __init__(self, name, kind, weak):
        self.name, self.kind, self.weak = name, kind, weak

    def __repr__(self):
        return "Extern(%r, %r%s)" % (self.name, self.kind, ", weak" if self.weak else "")


class ObjectSpec(object):
    """Everything a loader needs from an object, nothing loaded yet."""

    def __init__(self, maps, programs, license, btf, btf_ext, byteorder):
        self.maps = maps  # name -> MapSpec, `.maps` ones then global data ones (named after their section)
        self.programs = programs  # name -> ProgramSpec
        self.license = license  # str, or None without a license section
        self.btf = btf  # the .BTF blob fixed up for BPF_BTF_LOAD, or None
        self.btf_ext = btf_ext  # the .BTF.ext section as is, or None
        self.byteorder = byteorder  # "little" or "big": the object's, which must be the kernel's
        self.subprograms = []  # names of the functions of .text, which programs call
        self.externs = []  # [Extern]
        self.core_relocations = []  # [CoreRelocation]
        self.struct_ops = []  # names of the struct_ops sections

    @property
    def data_sections(self):
        """The global data maps, one per section."""
        return [m for m in self.maps.values() if m.section != MAPS_SECTION]

    def __repr__(self):
        return "ObjectSpec(maps=%s, programs=%s, license=%r)" % (sorted(self.maps), sorted(self.programs),
                                                                 self.license)


_SECTION_DEFS = [(name, PROG_TYPES.index(prog_type), ATTACH_TYPES.index(attach_type) if attach_type else 0, flags)
                 for name, prog_type, attach_type, flags in SECTION_DEFS]


def section_def(section):
    """(program type, expected attach type, prog_flags, known) of a program section, as libbpf's find_sec_def.

    A name libbpf 1.x does not know (known False) gets what libbpf 0.x guessed from the part before its
    first "/" ("xdp/other": xdp); a name with no guess at all raises ObjectError.
    """
    name = section[1:] if section.startswith("?") else section
    for pattern, prog_type, attach_type, flags in _SECTION_DEFS:
        if pattern.endswith("/"):
            matches = name.startswith(pattern)
        elif pattern.endswith("+"):
            matches = name == pattern[:-1] or name.startswith(pattern[:-1] + "/")
        else:
            matches = name == pattern
        if matches:
            return prog_type, attach_type, flags, True
    prefix = name.split("/", 1)[0]
    for pattern, prog_type, attach_type, flags in _SECTION_DEFS:
        if pattern.rstrip("+/") == prefix:
            return prog_type, attach_type, flags, False
    raise ObjectError("section '%s': unknown program type (libbpf knows none of that name)" % section)


def read_object(data):
    """Read an ELF BPF object (bytes) into an ObjectSpec; anything damaged raises ObjectError."""
    f = elf.ElfFile(data)
    if f.section_by_name("maps") is not None:
        raise ObjectError("legacy 'maps' section (struct bpf_map_def) is not supported, by libbpf 1.x either: "
                          "declare maps in '.maps'")
    btf_section = f.section_by_name(BTF_SECTION)
    types = _btf.parse_btf(f.section_data(btf_section)) if btf_section is not None else None
    hidden = _hidden_symbols(f)
    maps, values_at = _read_maps(f, types)
    maps.update((m.name, m) for m in _read_data_maps(f, types, hidden))
    functions = _read_functions(f)
    _read_relocations(f, functions, maps, values_at)
    btf_ext_section = f.section_by_name(BTF_EXT_SECTION)
    # Like libbpf, .BTF.ext is ignored without the .BTF its records point into.
    btf_ext = f.section_data(btf_ext_section) if btf_ext_section is not None and types else None
    infos = _btf.parse_ext_infos(btf_ext, types) if btf_ext is not None else None
    text = [func for func in functions if func.subprogram]
    programs = {}
    for main in functions:
        if main.subprogram:
            continue
        if main.name in programs:
            raise ObjectError("program '%s' is defined twice" % main.name)
        programs[main.name] = _link(main, text, f.byteorder, infos)
    license = None
    license_section = f.section_by_name(LICENSE_SECTION)
    if license_section is not None:
        license = f.section_data(license_section).split(b"\0")[0].decode("ascii", "replace")
    static_functions = {func.name for func in text if func.name in hidden}
    objspec = ObjectSpec(maps, programs, license, _fixed_up_btf(f, types, hidden, static_functions), btf_ext,
                         "little" if f.byteorder == "<" else "big")
    objspec.subprograms = [func.name for func in text]
    objspec.externs = _read_externs(f, types)
    objspec.core_relocations = _core_relocations(infos, functions, types) if infos else []
    objspec.struct_ops = [s.name for s in f.sections if s.name in STRUCT_OPS_SECTIONS]
    return objspec


def _hidden_symbols(f):
    """Names of the global symbols whose visibility keeps them inside the object (STV_HIDDEN, STV_INTERNAL)."""
    return {s.name for s in f.symbols() if s.bind in (elf.STB_GLOBAL, elf.STB_WEAK)
            and s.visibility in (elf.STV_HIDDEN, elf.STV_INTERNAL)}


def _read_maps(f, types):
    """MapSpecs from the BTF description of the `.maps` section, and {name: offset of its `values`}."""
    section = f.section_by_name(MAPS_SECTION)
    if section is None:
        return {}, {}
    if types is None:
        raise ObjectError("the object has a '.maps' section but no BTF to describe it")
    datasec = types.find(MAPS_SECTION, _btf.BTF_KIND_DATASEC)
    if datasec is None:
        raise ObjectError("the object's BTF has no DATASEC for its '.maps' section")
    maps, values_at = {}, {}
    for info in datasec.vars:
        var = types.type_by_id(info.type)
        if var.kind != _btf.BTF_KIND_VAR:
            raise ObjectError("'.maps' holds %s, not a map variable" % var.describe())
        if var.name in maps:
            raise ObjectError("map '%s' is declared twice" % var.name)
        if var.linkage == _btf.BTF_VAR_GLOBAL_EXTERN:
            raise ObjectError("map '%s' is extern: declare it in this object" % var.name)
        maps[var.name], offset = _map_spec(types, var)
        if offset is not None:
            values_at[var.name] = offset
    return maps, values_at


def _map_spec(types, var):
    """A MapSpec from a map variable (a struct whose members are `__uint(name, value)`, `__type(name, T)` or
    `__array(values, ...)`), and the byte offset of its `values`, or None."""
    definition = types.skip_modifiers(var.type)
    if definition.kind != _btf.BTF_KIND_STRUCT:
        raise ObjectError("map '%s': its definition is %s, not a struct" % (var.name, definition.describe()))
    numbers, typed, values_at = {}, {}, None
    for i, member in enumerate(definition.members):
        if member.name in _MAP_INT_MEMBERS:
            numbers[member.name] = _map_int(types, var.name, member)
        elif member.name in ("key", "value"):
            typed[member.name] = _map_type(types, var.name, member)
        elif member.name == "values" and i == len(definition.members) - 1:
            values_at = _map_values_member(types, var.name, member, numbers.get("type", 0))
        else:
            raise ObjectError("map '%s': member '%s' is not supported" % (var.name, member.name))
    if not numbers.get("type"):
        raise ObjectError("map '%s': no map type (__uint(type, ...))" % var.name)
    if numbers.get("pinning", 0) not in (LIBBPF_PIN_NONE, LIBBPF_PIN_BY_NAME):
        raise ObjectError("map '%s': pinning %d is neither LIBBPF_PIN_NONE nor LIBBPF_PIN_BY_NAME" %
                          (var.name, numbers["pinning"]))
    map_spec = MapSpec(var.name, type=numbers["type"], max_entries=numbers.get("max_entries", 0),
                       flags=numbers.get("map_flags", 0))
    map_spec.pinning = numbers.get("pinning", 0)
    map_spec.numa_node = numbers.get("numa_node", 0)
    map_spec.map_extra = numbers.get("map_extra", 0)
    if values_at is not None:  # its values are fds, of maps or programs
        numbers.setdefault("value_size", 4)
    for part in ("key", "value"):
        size = numbers.get(part + "_size", 0)
        if part in typed:
            type_size = types.size_of(typed[part])
            if size and size != type_size:
                raise ObjectError("map '%s': %s_size %d disagrees with the size of its %s type, %d" %
                                  (var.name, part, size, part, type_size))
            size = type_size
            setattr(map_spec, "btf_%s_type_id" % part, typed[part])
        setattr(map_spec, part + "_size", size)
    if values_at is not None and map_spec.value_size != 4:
        raise ObjectError("map '%s': value_size %d, but the fds its `values` hold take 4 bytes" %
                          (var.name, map_spec.value_size))
    return map_spec, values_at


def _map_values_member(types, map_name, member, map_type):
    """The byte offset of `__array(values, ...)`, which only map-in-maps and program arrays have."""
    if map_type not in (BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS, BPF_MAP_TYPE_PROG_ARRAY):
        raise ObjectError("map '%s': only map-in-maps and program arrays have `values` (declare its type first)"
                          % map_name)
    array = types.type_by_id(member.type)
    if array.kind != _btf.BTF_KIND_ARRAY or array.array.nelems:
        raise ObjectError("map '%s': `values` is %s, not an array of no size (__array)" %
                          (map_name, array.describe()))
    return member.bit_offset // 8


def _map_type(types, map_name, member):
    """The type id of `__type(name, T)`, which is `T *name`: the kernel takes T's id, and its size."""
    pointer = types.skip_modifiers(member.type)
    if pointer.kind != _btf.BTF_KIND_PTR:
        raise ObjectError("map '%s': '%s' is %s, expected a pointer (__type)" %
                          (map_name, member.name, pointer.describe()))
    return pointer.type


def _map_int(types, map_name, member):
    """The value of `__uint(name, value)`, which clang encodes as `int (*name)[value]`."""
    pointer = types.skip_modifiers(member.type)
    if pointer.kind != _btf.BTF_KIND_PTR:
        raise ObjectError("map '%s': '%s' is %s, expected a pointer to an array (__uint)" %
                          (map_name, member.name, pointer.describe()))
    array = types.type_by_id(pointer.type)
    if array.kind != _btf.BTF_KIND_ARRAY:
        raise ObjectError("map '%s': '%s' points to %s, expected an array (__uint)" %
                          (map_name, member.name, array.describe()))
    return array.array.nelems


def _is_data_section(section):
    """Whether libbpf makes a global data map of a section: .data, .rodata, .bss and their .NAME variants."""
    if section.size == 0:
        return False
    if section.type == elf.SHT_PROGBITS and not section.flags & elf.SHF_EXECINSTR:
        return any(section.name == base or section.name.startswith(base + ".") for base in (".data", ".rodata"))
    return section.type == elf.SHT_NOBITS and (section.name == ".bss" or section.name.startswith(".bss."))


def _read_data_maps(f, types, hidden):
    """A MapSpec per global data section: an array of one entry, the section, as libbpf's internal maps."""
    maps = []
    for section in f.sections:
        if not _is_data_section(section):
            continue
        if section.size > 0xffffffff:
            raise ObjectError("section '%s' of %d bytes is too large for a map value" % (section.name, section.size))
        read_only = section.name.startswith(".rodata")
        datasec = types.find(section.name, _btf.BTF_KIND_DATASEC) if types else None
        flags = BPF_F_RDONLY_PROG if read_only else 0
        # As libbpf 1.2+: mmap()able (for a skeleton) only with a variable visible outside the object.
        if datasec is not None and any(_is_global_variable(types, info.type, hidden) for info in datasec.vars):
            flags |= BPF_F_MMAPABLE
        initial = f.section_data(section) if section.type != elf.SHT_NOBITS else None
        maps.append(MapSpec(section.name, BPF_MAP_TYPE_ARRAY, 4, section.size, 1, flags,
                            btf_value_type_id=datasec.id if datasec is not None else 0, section=section.name,
                            initial=initial))
    return maps


def _is_global_variable(types, type_id, hidden):
    var = types.type_by_id(type_id)
    return var.kind == _btf.BTF_KIND_VAR and var.linkage != _btf.BTF_VAR_STATIC and var.name not in hidden


def _read_externs(f, types):
    """The object's externs: undefined global symbols, each described by a VAR or FUNC of its BTF."""
    externs = []
    for sym in f.symbols():
        if _is_extern(sym) and sym.name:
            externs.append(Extern(sym.name, _extern_kind(types, sym.name), sym.bind == elf.STB_WEAK))
    return externs


def _is_extern(sym):
    return (sym.shndx == elf.SHN_UNDEF and sym.bind in (elf.STB_GLOBAL, elf.STB_WEAK)
            and sym.type == elf.STT_NOTYPE)


def _extern_kind(types, name):
    if types is None:
        return None
    for datasec in types.types:
        if datasec.kind != _btf.BTF_KIND_DATASEC or datasec.name not in _EXTERN_KINDS:
            continue
        for info in datasec.vars:
            t = types.type_by_id(info.type)
            if t.name == name:
                return "kfunc" if t.kind == _btf.BTF_KIND_FUNC else _EXTERN_KINDS[datasec.name]
    return None


class _Function(object):
    """A function of a code section before linking: a program, or a subprogram of .text."""

    __slots__ = ("name", "section", "index", "offset", "code", "subprogram", "relocations")

    def __init__(self, sym, section, code):
        self.name = sym.name
        self.section = section.name
        self.index = section.index
        self.offset = sym.value  # in bytes
        self.code = code
        self.subprogram = False
        self.relocations = {}  # instruction index -> (kind, map name or None, addend in bytes)

    @property
    def start(self):
        return self.offset // BPF_INSN_SIZE

    @property
    def count(self):
        return len(self.code) // BPF_INSN_SIZE

    @property
    def role(self):
        return "subprogram" if self.subprogram else "program"


def _read_functions(f):
    """Every function of every code section, in section then offset order, as libbpf's bpf_object__add_programs;
    those in .text are subprograms, unless the object has no other function."""
    functions = []
    symbols = f.symbols()
    for section in f.sections:
        if section.type != elf.SHT_PROGBITS or not section.flags & elf.SHF_EXECINSTR or section.size == 0:
            continue
        code = f.section_data(section)
        found = sorted((s for s in symbols if s.shndx == section.index and s.type == elf.STT_FUNC),
                       key=lambda s: s.value)
        if not found:
            raise ObjectError("section '%s' has code but no function symbol" % section.name)
        end = 0
        for sym in found:
            where = "function '%s' in section '%s'" % (sym.name, section.name)
            if sym.bind == elf.STB_LOCAL and section.name != TEXT_SECTION:
                raise ObjectError("program '%s' in section '%s' is static: programs must be global functions" %
                                  (sym.name, section.name))
            if sym.value % BPF_INSN_SIZE or sym.size % BPF_INSN_SIZE or sym.size == 0:
                raise ObjectError("%s: offset %d and size %d are not whole instructions" % (where, sym.value,
                                                                                            sym.size))
            if sym.value < end or sym.value + sym.size > len(code):
                raise ObjectError("%s: bytes %d..%d overlap another function or leave the section (%d bytes)" %
                                  (where, sym.value, sym.value + sym.size, len(code)))
            end = sym.value + sym.size
            functions.append(_Function(sym, section, code[sym.value:end]))
    for func in functions:
        func.subprogram = func.section == TEXT_SECTION and len(functions) > 1
    return functions


def _read_relocations(f, functions, maps, values_at):
    """Record each relocation of a code section on its function, and the initial values of `.maps` maps."""
    by_section = {}
    for func in functions:
        by_section.setdefault(func.index, []).append(func)
    text = [s.index for s in f.sections if s.name == TEXT_SECTION]
    data_maps = {m.section: m.name for m in maps.values() if m.section != MAPS_SECTION}
    maps_section = f.section_by_name(MAPS_SECTION)
    for section in f.sections:
        if section.type not in (elf.SHT_REL, elf.SHT_RELA):
            continue
        if section.info in by_section:
            if section.type == elf.SHT_RELA:
                raise ObjectError("section '%s': RELA relocations are not supported in BPF objects" %
                                  f.sections[section.info].name)
            for rel in f.relocations(section):
                if rel.type != elf.R_BPF_NONE:
                    func = _function_at(f.sections[section.info], by_section[section.info], rel.offset)
                    _record(f, func, rel, text[0] if text else None, data_maps, maps)
        elif maps_section is not None and section.info == maps_section.index and section.type == elf.SHT_REL:
            _read_map_values(f, f.relocations(section), maps, values_at)


def _record(f, func, rel, text_index, data_maps, maps):
    """Record one relocation on its instruction, as libbpf's bpf_program__record_reloc classifies it."""
    order = f.byteorder
    index = (rel.offset - func.offset) // BPF_INSN_SIZE
    where = "%s '%s' instruction %d" % (func.role, func.name, index)
    sym = rel.symbol
    name = sym.name
    if not name:  # a static function or variable: the relocation is against its section's symbol
        name = f.sections[sym.shndx].name if sym.type == elf.STT_SECTION and sym.shndx < len(f.sections) else \
            "symbol %d" % sym.index
    opcode = func.code[index * BPF_INSN_SIZE]
    is_ld_imm64 = opcode == BPF_LD_IMM64 and (index + 2) * BPF_INSN_SIZE <= len(func.code)
    if opcode != BPF_CALL and not is_ld_imm64:
        raise ObjectError("%s: relocation to '%s' on opcode 0x%02x, not a whole ld_imm64 nor a call" %
                          (where, name, opcode))
    if _is_extern(sym):
        func.relocations[index] = ("extern", sym.name, 0)
        return
    if opcode == BPF_CALL:
        if _regs(func.code, index, order)[1] != BPF_PSEUDO_CALL:
            raise ObjectError("%s: relocation to '%s' on a call that is not a BPF-to-BPF call" % (where, name))
        if sym.shndx != text_index or sym.value % BPF_INSN_SIZE:
            raise ObjectError("%s: call to '%s', which is not a function of .text (where subprograms live)" %
                              (where, name))
        func.relocations[index] = ("call", None, sym.value)
        return
    if sym.shndx == elf.SHN_UNDEF or sym.shndx >= _SHN_LORESERVE:
        raise ObjectError("%s: relocation to '%s', which is in no section (an uninitialized global variable? "
                          "initialize it)" % (where, name))
    home = f.section_by_index(sym.shndx, "symbol %r" % name)
    if sym.shndx == text_index and (sym.type == elf.STT_FUNC and sym.bind == elf.STB_GLOBAL or
                                    sym.type == elf.STT_SECTION and sym.bind == elf.STB_LOCAL):
        if sym.value % BPF_INSN_SIZE or _imm(func.code, index, order) % BPF_INSN_SIZE:
            raise ObjectError("%s: the address of '%s' is not on an instruction" % (where, name))
        func.relocations[index] = ("func", None, sym.value)  # a callback's address
    elif home.name in data_maps:
        func.relocations[index] = ("data", data_maps[home.name], sym.value)
    elif home.name != MAPS_SECTION:
        raise ObjectError("%s: relocation to missing map '%s' (a symbol of section %r, neither '%s' nor global "
                          "data: .data*, .rodata*, .bss*)" % (where, name, home.name, MAPS_SECTION))
    elif sym.name not in maps:
        raise ObjectError("%s: relocation to missing map '%s' ('%s' declares no map of that name)" %
                          (where, name, MAPS_SECTION))
    else:
        func.relocations[index] = ("map", sym.name, 0)


def _read_map_values(f, relocations, maps, values_at):
    """The initial entries of map-in-maps and program arrays (`.values = {...}`), from `.rel.maps`."""
    symbols = [s for s in f.symbols() if s.name in maps and s.type == elf.STT_OBJECT
               and f.section_by_index(s.shndx, "symbol %r" % s.name).name == MAPS_SECTION]
    for rel in relocations:
        owner = [s for s in symbols if s.value <= rel.offset < s.value + s.size and s.name in values_at]
        if not owner:
            raise ObjectError("'.maps' relocation at byte %d to '%s' is in no map's `values`" %
                              (rel.offset, rel.symbol.name))
        slot, rest = divmod(rel.offset - owner[0].value - values_at[owner[0].name], 8)  # BPF pointers
        if slot < 0 or rest:
            raise ObjectError("'.maps' relocation at byte %d to '%s' is not on a slot of map '%s'" %
                              (rel.offset, rel.symbol.name, owner[0].name))
        maps[owner[0].name].values.append((slot, rel.symbol.name))


def _function_at(section, functions, offset):
    if offset % BPF_INSN_SIZE:
        raise ObjectError("section '%s': relocation at offset %d is not on an instruction" % (section.name, offset))
    for func in functions:
        if func.offset <= offset < func.offset + len(func.code):
            return func
    raise ObjectError("section '%s': relocation at offset %d is outside every function" % (section.name, offset))


# Instruction fields (struct bpf_insn): code, dst_reg and src_reg nibbles (in the byte order's order), off, imm.

def _regs(code, index, order):
    """(dst_reg, src_reg) of an instruction."""
    regs = code[index * BPF_INSN_SIZE + 1]
    return (regs & 0xf, regs >> 4) if order == "<" else (regs >> 4, regs & 0xf)


def _set_src(code, index, src, order):
    dst = _regs(code, index, order)[0]
    code[index * BPF_INSN_SIZE + 1] = dst | src << 4 if order == "<" else dst << 4 | src


def _off(code, index, order):
    return struct.unpack_from(order + "h", code, index * BPF_INSN_SIZE + 2)[0]


def _imm(code, index, order):
    return struct.unpack_from(order + "i", code, index * BPF_INSN_SIZE + 4)[0]


def _set_imm(code, index, value, what, order):
    if not _S32[0] <= value < _S32[1]:
        raise ObjectError("%s: immediate %d does not fit in 32 bits" % (what, value))
    struct.pack_into(order + "i", code, index * BPF_INSN_SIZE + 4, value)


def _callee(func, index, text, order):
    """The subprogram an instruction calls or takes the address of, or None; as libbpf's bpf_object__reloc_code."""
    code = func.code
    kind, _, addend = func.relocations.get(index, (None, None, 0))
    dst, src = _regs(code, index, order)
    where = "%s '%s' instruction %d" % (func.role, func.name, index)
    opcode = code[index * BPF_INSN_SIZE]
    if opcode == BPF_CALL and src == BPF_PSEUDO_CALL and not dst and not _off(code, index, order):
        if kind == "extern":
            return None  # a kfunc, which the loader refuses
        if kind not in (None, "call"):
            raise ObjectError("%s: a call with a %s relocation" % (where, kind))
        # With a relocation: to the symbol (a global function) plus imm (a static one's place in .text);
        # without: a static function of the same section.
        target = addend // BPF_INSN_SIZE + _imm(code, index, order) + 1 if kind else \
            func.start + index + _imm(code, index, order) + 1
    elif kind == "func":
        target = (addend + _imm(code, index, order)) // BPF_INSN_SIZE
    elif kind is None and opcode == BPF_LD_IMM64 and src == BPF_PSEUDO_FUNC:
        raise ObjectError("%s: a callback address with no relocation" % where)
    else:
        return None
    for sub in text:
        if sub.start <= target < sub.start + sub.count:
            return sub
    raise ObjectError("%s: calls instruction %d of .text, which is in no subprogram" % (where, target))


def _link(main, text, order, infos):
    """A program with the subprograms it calls, transitively, appended in the order libbpf appends them
    (depth first, at the first call), each call fixed up, and map references marked."""
    code = bytearray(main.code)
    placed = [main]
    at = {(main.index, main.offset): 0}
    stack = [(main, 0)]
    while stack:
        func, i = stack.pop()
        start = at[(func.index, func.offset)]
        while i < func.count:
            sub = _callee(func, i, text, order)
            if sub is None:
                i += 1
                continue
            key = (sub.index, sub.offset)
            if key not in at:  # append it, link it, then come back to this call
                at[key] = len(code) // BPF_INSN_SIZE
                code += sub.code
                placed.append(sub)
                stack += [(func, i), (sub, 0)]
                break
            if code[(start + i) * BPF_INSN_SIZE] == BPF_LD_IMM64:
                _set_src(code, start + i, BPF_PSEUDO_FUNC, order)
            _set_imm(code, start + i, at[key] - (start + i) - 1, "%s '%s'" % (func.role, func.name), order)
            i += 1
    map_relocations = []
    for func in placed:
        start = at[(func.index, func.offset)]
        for index, (kind, target, addend) in sorted(func.relocations.items()):
            if kind in ("map", "data"):
                _mark_map_reference(code, start + index, kind, addend, order)
                map_relocations.append((start + index, target))
    program = ProgramSpec(main.name, main.section, main.offset, bytes(code))
    program.map_relocations = map_relocations
    program.subprograms = [func.name for func in placed[1:]]
    if infos:
        for what in ("func_info", "line_info"):
            setattr(program, what, _linked_ext_info(what, infos[what], placed, at, order))
    return program


def _mark_map_reference(code, index, kind, addend, order):
    """Mark an ld_imm64 as loading a map (its fd to come), or an address in a global data map's value."""
    if kind == "map":
        _set_src(code, index, BPF_PSEUDO_MAP_FD, order)
        return
    _set_src(code, index, BPF_PSEUDO_MAP_VALUE, order)
    # As libbpf: the offset is the symbol's place in its section plus what the instruction adds to it.
    _set_imm(code, index + 1, _imm(code, index, order) + addend, "instruction %d" % index, order)


def _linked_ext_info(what, info, placed, at, order):
    """(record size, bytes) of a linked program's func or line info, as libbpf's reloc_prog_func_and_line_info:
    none when the program itself has none; a subprogram without any while the program has them is damage."""
    rec_size, sections = info
    records = []
    for func in placed:
        own = _function_records(what, func, sections.get(func.section, ()), order)
        if not own:
            if func is placed[0]:
                return None
            raise ObjectError("program '%s': subprogram '%s' has no %s in .BTF.ext while the program has" %
                              (placed[0].name, func.name, what))
        shift = at[(func.index, func.offset)] - func.start
        records += [struct.pack(order + "I", struct.unpack_from(order + "I", r)[0] // BPF_INSN_SIZE + shift) + r[4:]
                    for r in own]
    return rec_size, b"".join(records)


def _function_records(what, func, records, order):
    """The records of a function: from the first at or past its start, up to the first past its end."""
    own = []
    for record in records:
        insn_off = struct.unpack_from(order + "I", record)[0]
        if insn_off < func.offset:
            continue
        if insn_off >= func.offset + len(func.code):
            break
        if insn_off % BPF_INSN_SIZE:
            raise ObjectError("%s '%s': %s at byte %d, not on an instruction" % (func.role, func.name, what,
                                                                                  insn_off))
        own.append(record)
    return own


def _core_relocations(infos, functions, types):
    """The CO-RE relocation records, each with its function and what it reaches."""
    _, sections = infos["core_relo"]
    found = []
    for section, records in sorted(sections.items()):
        for record in records:
            insn_off, type_id, access_off, kind = struct.unpack_from(types.byteorder + "IIII", record)
            func = [fn for fn in functions if fn.section == section and fn.offset <= insn_off < fn.offset +
                    len(fn.code)]
            if not func or insn_off % BPF_INSN_SIZE or kind >= len(CORE_RELO_KINDS):
                raise ObjectError("malformed .BTF.ext: CO-RE relocation of kind %d at byte %d of section '%s', "
                                  "on no instruction of a function" % (kind, insn_off, section))
            access = elf.cstring(types.strings, access_off, "malformed .BTF.ext: CO-RE access string")
            type_name, member = _btf.core_access(types, type_id, access,
                                                 enum_value=CORE_RELO_KINDS[kind].startswith("enumval"))
            found.append(CoreRelocation(func[0].name, (insn_off - func[0].offset) // BPF_INSN_SIZE,
                                        CORE_RELO_KINDS[kind], type_name, access, member))
    return found


def _fixed_up_btf(f, types, hidden, static_functions):
    """The .BTF blob with sizes and offsets filled in from the ELF, as libbpf does before loading it."""
    if types is None:
        return None
    sizes = {}
    for section in f.sections:
        sizes.setdefault(section.name, section.size)
    values = {}
    # As libbpf's find_elf_var_sym: the first global or weak data symbol of the name.
    for sym in f.symbols():
        if sym.type == elf.STT_OBJECT and sym.bind in (elf.STB_GLOBAL, elf.STB_WEAK):
            values.setdefault(sym.name, sym.value)
    return _btf.fixup_datasecs(types, sizes, values, hidden, static_functions)
