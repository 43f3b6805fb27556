"""The native loader against libbpf: global data, BPF-to-BPF calls, pinning, XDP and TC sections, refusals made
before any system call, and cleanup however a load ends; on objects built from tests/bpf/ and on Debian's libxdp1
objects. Spec tests need no privileges; integration tests load into the kernel."""
import errno
import json
import os
import re
import struct
import subprocess

import pytest

import corpus
import frames
from conftest import bpf_source, compile_bpf, guarded, tool
from probe import layout
from probe.bpf import btf, constants, elf, spec, syscall
from probe.bytecode import embedded_object
from probe.bpf.libbpf import LibbpfEngine
from probe.bpf.native import NativeEngine, check_supported
from probe.errors import KernelError, ObjectError, ProbeError, VerifierError

# Objects built here: name -> (source under tests/bpf/, what to #define before it).
BUILT = {
    "global_data": ("global_data.bpf.c", ()),
    "calls": ("calls.bpf.c", ()),
    "xdp_sections": ("xdp_sections.bpf.c", ()),
    "tc": ("tc.bpf.c", ()),
    "tcx": ("tcx.bpf.c", ()),
    "map_kinds": ("map_kinds.bpf.c", ()),
    "pinned_map": ("pinned_map.bpf.c", ()),
    "pinned_map_8": ("pinned_map.bpf.c", ("PINNED_MAX_ENTRIES 8",)),
    "core_read": ("core_read.bpf.c", ()),
    "kconfig_extern": ("kconfig_extern.bpf.c", ()),
    "kprobe": ("unsupported.bpf.c", ("KPROBE",)),
    "map_in_map": ("unsupported.bpf.c", ("MAP_IN_MAP",)),
    "prog_array_values": ("unsupported.bpf.c", ("PROG_ARRAY_VALUES",)),
    "struct_ops": ("unsupported.bpf.c", ("STRUCT_OPS",)),
    "ksym": ("unsupported.bpf.c", ("KSYM",)),
    "kfunc": ("unsupported.bpf.c", ("KFUNC",)),
    "xdp_other": ("unsupported.bpf.c", ("XDP_OTHER",)),
}

# What the native loader says of each object it refuses: the feature and the symbol, in one line.
REFUSALS = {
    "core_read": "program 'core_reader' uses a CO-RE relocation (byte_off) of 'struct xdp_md'.'ingress_ifindex'",
    "kconfig_extern": "extern 'CONFIG_DOES_NOT_EXIST' (__kconfig)",
    "kprobe": "program 'probe_open' is a kprobe program (section 'kprobe/do_sys_open')",
    "map_in_map": "map 'outer' is a map-in-map (array_of_maps)",
    "prog_array_values": "map 'jumps' has initial values (slot 1: 'tail')",
    "struct_ops": "struct_ops (section '.struct_ops')",
    "ksym": "extern 'bpf_link_fops' (__ksym)",
    "kfunc": "extern 'bpf_rcu_read_lock' (__ksym function, a kfunc)",
    "xdp_other": "program 'other': section 'xdp/other' names no program type libbpf 1.x knows",
    "xdpdump_bpf.o": "program 'trace_on_entry' is a tracing program (section 'fentry/func')",
}
USE_LIBBPF = "; use --loader libbpf"
XDP_ABORTED, XDP_DROP, XDP_PASS = 0, 1, 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpf")
    out = {}
    for name, (source, defines) in BUILT.items():
        text = "".join("#define %s\n" % d for d in defines) + bpf_source(source)
        out[name] = compile_bpf(folder, text).read_bytes()
    return out


def insn(code, index):
    """(opcode, dst_reg, src_reg, off, imm) of a little-endian instruction."""
    opcode, regs, off, imm = struct.unpack_from("<BBhi", code, index * 8)
    return opcode, regs & 0xf, regs >> 4, off, imm


# The spec: what the object holds, read without a system call

def test_section_names_as_libbpf_reads_them():
    xdp, tc = constants.BPF_PROG_TYPE_XDP, constants.BPF_PROG_TYPE_SCHED_CLS
    frags = constants.BPF_F_XDP_HAS_FRAGS
    expected = {
        "xdp": (xdp, constants.BPF_XDP, 0, True),
        "?xdp": (xdp, constants.BPF_XDP, 0, True),
        "xdp/devmap": (xdp, constants.BPF_XDP_DEVMAP, 0, True),
        "xdp/cpumap": (xdp, constants.BPF_XDP_CPUMAP, 0, True),
        "xdp.frags": (xdp, constants.BPF_XDP, frags, True),
        "xdp.frags/devmap": (xdp, constants.BPF_XDP_DEVMAP, frags, True),
        "xdp.frags/cpumap": (xdp, constants.BPF_XDP_CPUMAP, frags, True),
        "tc": (tc, 0, 0, True),
        "classifier": (tc, 0, 0, True),
        "tc/ingress": (tc, constants.BPF_TCX_INGRESS, 0, True),
        "tc/egress": (tc, constants.BPF_TCX_EGRESS, 0, True),
        "tcx/ingress": (tc, constants.BPF_TCX_INGRESS, 0, True),
        "tcx/egress": (tc, constants.BPF_TCX_EGRESS, 0, True),
        "kprobe/do_sys_open": (constants.PROG_TYPES.index("kprobe"), 0, 0, True),
        "fentry.s/f": (constants.PROG_TYPES.index("tracing"), constants.ATTACH_TYPES.index("trace_fentry"),
                       constants.BPF_F_SLEEPABLE, True),
        # Names libbpf 1.x does not know: libbpf 0.x's guess from the part before "/", refused at load.
        "xdp/other": (xdp, constants.BPF_XDP, 0, False),
        "xdp/devmap/x": (xdp, constants.BPF_XDP, 0, False),
        "tc/other": (tc, 0, 0, False),
    }
    assert {name: spec.section_def(name) for name in expected} == expected
    for name in ("tcx", "xdp_devmap/x", "kprobex", ".text", "tracepointless"):
        with pytest.raises(ObjectError, match="section '%s': unknown program type" % re.escape(name)):
            spec.section_def(name)


def test_attach_types_are_the_kernels():
    """ATTACH_TYPES follows enum bpf_attach_type of the UAPI header (which may end earlier than the kernel's)."""
    with open("/usr/include/linux/bpf.h") as f:
        body = re.search(r"enum bpf_attach_type \{(.*?)\};", f.read(), re.S).group(1)
    uapi = [name[4:].lower() for name in re.findall(r"^\s*(BPF_\w+),", body, re.M)]
    assert uapi and constants.ATTACH_TYPES[:len(uapi)] == tuple(uapi)
    for name in ("BPF_XDP_DEVMAP", "BPF_XDP_CPUMAP", "BPF_XDP", "BPF_TCX_INGRESS", "BPF_TCX_EGRESS"):
        assert getattr(constants, name) == constants.ATTACH_TYPES.index(name[4:].lower())


def test_global_data_maps(built):
    data = built["global_data"]
    s = spec.read_object(data)
    f = elf.ElfFile(data)
    sections = {m.section: m for m in s.data_sections}
    assert sorted(sections) == [".bss", ".data", ".data.custom", ".rodata", ".rodata.custom", ".rodata.str1.1"]
    types = btf.parse_btf(s.btf)
    rdonly, mmapable = constants.BPF_F_RDONLY_PROG, constants.BPF_F_MMAPABLE
    flags = {".data": mmapable, ".bss": mmapable, ".data.custom": mmapable, ".rodata": rdonly | mmapable,
             ".rodata.custom": rdonly | mmapable, ".rodata.str1.1": rdonly}  # strings: no global variable
    for name, m in sections.items():
        section = f.section_by_name(name)
        assert s.maps[name] is m and m.name == name
        assert (m.type, m.key_size, m.value_size, m.max_entries) == (constants.BPF_MAP_TYPE_ARRAY, 4, section.size, 1)
        assert m.flags == flags[name] and m.read_only == name.startswith(".rodata")
        assert m.initial == (None if name == ".bss" else f.section_data(section))
        assert m.btf_key_type_id == 0  # as libbpf: the kernel takes an array keyed by nothing but its index
        if name == ".rodata.str1.1":
            assert m.btf_value_type_id == 0
        else:
            value = types.type_by_id(m.btf_value_type_id)
            assert (value.kind, value.name, value.size) == (btf.BTF_KIND_DATASEC, name, section.size)
    # A hidden global is static in the BTF the kernel gets.
    hidden = [t for t in types.types if t.kind == btf.BTF_KIND_VAR and t.name == "hidden_var"]
    assert hidden[0].linkage == btf.BTF_VAR_STATIC


def test_global_data_references(built):
    """Each reference is an ld_imm64 marked BPF_PSEUDO_MAP_VALUE whose second half holds symbol value + addend."""
    data = built["global_data"]
    program = spec.read_object(data).programs["globals"]
    f = elf.ElfFile(data)
    relocations = f.relocations(f.section_by_name(".relxdp"))
    assert len(relocations) == len(program.map_relocations)
    for rel, (index, map_name) in zip(relocations, program.map_relocations):
        assert rel.offset == index * 8
        home = f.sections[rel.symbol.shndx].name
        assert map_name == home
        first, second = insn(program.instructions, index), insn(program.instructions, index + 1)
        original = insn(f.section_data(f.section_by_name("xdp")), index)
        assert (first[0], first[2]) == (constants.BPF_LD_IMM64, constants.BPF_PSEUDO_MAP_VALUE)
        assert second[4] == original[4] + rel.symbol.value
    # static_var is reached through the .data section symbol, 8 bytes in.
    static = [i for i, name in program.map_relocations if name == ".data" and insn(program.instructions, i + 1)[4] == 8]
    assert static


def test_calls_linked_as_libbpf_links_them(built):
    s = spec.read_object(built["calls"])
    assert sorted(s.subprograms) == ["count_and_judge", "plus_scale", "step", "twice"]
    first, second = s.programs["first"], s.programs["second"]
    assert first.subprograms == ["count_and_judge"]
    # Depth first, at the first call: the callback, then plus_scale, twice and count_and_judge.
    assert second.subprograms == ["step", "plus_scale", "twice", "count_and_judge"]
    f = elf.ElfFile(built["calls"])
    sizes = {sym.name: sym.size // 8 for sym in f.symbols() if sym.type == elf.STT_FUNC}
    for program in (first, second):
        starts, end = [], sizes[program.name]  # where each subprogram begins in the linked program
        for name in program.subprograms:
            starts.append(end)
            end += sizes[name]
        assert len(program.instructions) // 8 == end
        targets = set()
        for i in range(len(program.instructions) // 8):
            opcode, _, src, _, imm = insn(program.instructions, i)
            if (opcode, src) in ((constants.BPF_CALL, constants.BPF_PSEUDO_CALL),
                                 (constants.BPF_LD_IMM64, constants.BPF_PSEUDO_FUNC)):
                targets.add(i + imm + 1)
        assert targets == set(starts)  # every call and callback lands on a subprogram's first instruction
        # Func info: one record per function, at its start; line info carried along, in order.
        rec_size, records = program.func_info
        assert [struct.unpack_from("<I", records, at)[0] for at in range(0, len(records), rec_size)] == [0] + starts
        rec_size, records = program.line_info
        lines = [struct.unpack_from("<I", records, at)[0] for at in range(0, len(records), rec_size)]
        assert lines == sorted(lines) and lines[-1] < len(program.instructions) // 8
        assert all(any(line == start for line in lines) for start in [0] + starts)
    # The map reference of count_and_judge, appended to both programs, is relocated in each.
    assert [name for _, name in first.map_relocations] == ["calls"]
    assert [name for _, name in second.map_relocations] == [".data", "calls"]
    types = btf.parse_btf(s.btf)
    linkage = {t.name: t.linkage for t in types.types if t.kind == btf.BTF_KIND_FUNC}
    assert linkage["plus_scale"] == btf.BTF_FUNC_STATIC  # hidden: static for the verifier, as libbpf makes it
    assert linkage["count_and_judge"] == btf.BTF_FUNC_GLOBAL


def test_program_types_and_attach_types(built):
    programs = spec.read_object(built["xdp_sections"]).programs
    programs.update(spec.read_object(built["tc"]).programs)
    programs.update(spec.read_object(built["tcx"]).programs)
    frags = constants.BPF_F_XDP_HAS_FRAGS
    got = {name: (p.prog_type, p.expected_attach_type, p.prog_flags) for name, p in programs.items()}
    xdp, tc = constants.BPF_PROG_TYPE_XDP, constants.BPF_PROG_TYPE_SCHED_CLS
    assert got == {
        "plain": (xdp, constants.BPF_XDP, 0), "devmap": (xdp, constants.BPF_XDP_DEVMAP, 0),
        "cpumap": (xdp, constants.BPF_XDP_CPUMAP, 0), "frags": (xdp, constants.BPF_XDP, frags),
        "frags_devmap": (xdp, constants.BPF_XDP_DEVMAP, frags), "frags_cpumap": (xdp, constants.BPF_XDP_CPUMAP, frags),
        "tc_judge": (tc, 0, 0), "classifier_judge": (tc, 0, 0),
        "tcx_in": (tc, constants.BPF_TCX_INGRESS, 0), "tcx_out": (tc, constants.BPF_TCX_EGRESS, 0),
        "tc_in": (tc, constants.BPF_TCX_INGRESS, 0), "tc_out": (tc, constants.BPF_TCX_EGRESS, 0),
    }


def test_pinning_and_initial_values_described(built):
    maps = spec.read_object(built["pinned_map"]).maps
    assert (maps["pinned_counts"].pinning, maps["plain"].pinning) == (constants.LIBBPF_PIN_BY_NAME, 0)
    assert (maps["pinned_counts"].section, maps["plain"].section) == (".maps", ".maps")
    jumps = spec.read_object(built["prog_array_values"]).maps["jumps"]
    assert (jumps.type, jumps.value_size, jumps.values) == (constants.BPF_MAP_TYPE_PROG_ARRAY, 4, [(1, "tail")])


def test_core_relocations_and_externs_described(built):
    [relo] = spec.read_object(built["core_read"]).core_relocations
    assert (relo.function, relo.instruction, relo.kind, relo.type, relo.access, relo.member) == (
        "core_reader", 0, "byte_off", "struct xdp_md", "0:3", "ingress_ifindex")
    externs = {name: [(e.name, e.kind, e.weak) for e in spec.read_object(built[name]).externs]
               for name in ("kconfig_extern", "ksym", "kfunc")}
    assert externs == {"kconfig_extern": [("CONFIG_DOES_NOT_EXIST", "kconfig", False)],
                       "ksym": [("bpf_link_fops", "ksym", False)], "kfunc": [("bpf_rcu_read_lock", "kfunc", False)]}
    assert spec.read_object(built["struct_ops"]).struct_ops == [".struct_ops"]


@pytest.mark.parametrize("name", sorted(set(REFUSALS) & set(BUILT)))
def test_refusals_name_the_feature_before_any_system_call(built, name, monkeypatch):
    def no_syscall(cmd, attr):
        raise AssertionError("bpf(%s) made before refusing" % constants.BPF_COMMAND_NAMES.get(cmd, cmd))

    monkeypatch.setattr(syscall, "bpf", no_syscall)
    with pytest.raises(ObjectError) as checked:
        check_supported(spec.read_object(built[name]))
    with pytest.raises(ObjectError) as loading:
        NativeEngine().load_bytes(built[name])
    message = str(loading.value)
    assert message == str(checked.value) and "\n" not in message
    assert REFUSALS[name] in message
    if name != "xdp_other":  # libbpf 1.x refuses that one too
        assert message.endswith(USE_LIBBPF)


def test_supported_objects_pass_the_check(built):
    for name in ("global_data", "calls", "xdp_sections", "tc", "tcx", "map_kinds", "pinned_map"):
        check_supported(spec.read_object(built[name]))


def test_what_used_to_be_misnamed(built):
    """A global variable, a BPF-to-BPF call and a __kconfig extern are each named as what they are."""
    for name in ("global_data", "calls"):
        spec.read_object(built[name])  # no "relocation to missing map 'symbol 17'", no "R_BPF_64_32"
    message = str(guarded(NativeEngine().load_bytes, built["kconfig_extern"])[1])
    assert "__kconfig" in message and "missing map" not in message


@pytest.mark.parametrize("name", ["calls", "global_data"])
def test_big_endian_objects_read_alike(built, name, tmp_path):
    """Linking reads and writes instructions in the object's byte order; loading needs the machine's."""
    big = compile_bpf(tmp_path, bpf_source(BUILT[name][0]), target="bpfeb").read_bytes()
    ours, theirs = spec.read_object(built[name]), spec.read_object(big)
    for program in ours.programs.values():
        other = theirs.programs[program.name]
        assert (other.subprograms, other.map_relocations) == (program.subprograms, program.map_relocations)
        assert len(other.instructions) == len(program.instructions)
        # The same instructions, each field swapped: same opcodes, same register nibbles swapped, same imm.
        for i in range(len(program.instructions) // 8):
            opcode, dst, src, off, imm = insn(program.instructions, i)
            assert struct.unpack_from(">BBhi", other.instructions, i * 8) == (opcode, dst << 4 | src, off, imm)
    with pytest.raises(ObjectError, match="the object is big-endian, this machine little-endian"):
        check_supported(theirs)


# Loading: against libbpf, on what was built here and on libxdp1's objects

FRAMES = (
    frames.ether(frames.ETH_IP, frames.ipv4(frames.TCP, frames.tcp())),
    frames.ether(frames.ETH_IP, frames.ipv4(frames.UDP, frames.udp(b"u" * 64))),
    frames.ether(frames.ETH_IPV6, frames.ipv6(frames.UDP, frames.udp(b"6" * 32))),
    frames.ether(frames.ETH_ARP, frames.arp()),
    frames.ether(frames.ETH_IP, frames.ipv4(frames.UDP, frames.udp(b"j" * 5000))),  # past a page: XDP frags
)


def pins(folder):
    """What is pinned in a bpffs folder, but the iterators the kernel's bpf_preload puts at a bpffs' root."""
    return sorted(set(os.listdir(folder)) - {"maps.debug", "progs.debug"})


def observe(engine, data, pin_root):
    """What an engine made of an object: (tags, map attributes by native name, test-run outcomes, pins), or the
    ProbeError it raised."""
    try:
        obj = engine.load_bytes(data, pin_root=pin_root)
    except ProbeError as e:
        return e
    with obj:
        tags = {name: bytes(p.info().tag).hex() for name, p in obj.programs.items()}
        maps = {name: (m.type, m.key_size, m.value_size, m.max_entries, m.flags) for name, m in obj.maps.items()}
        runs = {}
        for name, program in sorted(obj.programs.items()):
            for frame in FRAMES:
                try:
                    runs.setdefault(name, []).append(program.test_run(frame)[0])
                except KernelError as e:  # devmap/cpumap programs and short skbs cannot run: alike for both
                    runs.setdefault(name, []).append("errno %d" % e.errno)
        return tags, maps, runs, pins(pin_root) if os.path.isdir(pin_root) else []


def native_name(libbpf_name, native_names):
    """The native name of a map libbpf named: libbpf prefixes .data, .rodata and .bss with a piece of the object's
    name (its address in memory, for an object opened from memory) and cuts custom sections at 15 characters."""
    if libbpf_name in native_names:
        return libbpf_name
    for name in native_names:
        if name[:15] == libbpf_name or name in (".data", ".rodata", ".bss") and libbpf_name.endswith(name):
            return name
    return libbpf_name


def compare(data, label, bpffs):
    """Load an object with both engines: where libbpf loads it, the native loader must make the same of it, or
    refuse it as REFUSALS says. Returns what each made of it."""
    libbpf = observe(LibbpfEngine(), data, os.path.join(bpffs, "libbpf"))
    native = observe(NativeEngine(), data, os.path.join(bpffs, "native"))
    if label in REFUSALS:
        assert isinstance(native, ObjectError) and REFUSALS[label] in str(native), native
        return libbpf, native
    if isinstance(libbpf, ProbeError):
        return libbpf, native  # only what libbpf loads must load natively
    assert not isinstance(native, ProbeError), "libbpf loads %s, the native loader says: %s" % (label, native)
    tags, maps, runs, pinned = libbpf
    assert native[0] == tags
    assert native[1] == {native_name(name, native[1]): attrs for name, attrs in maps.items()}
    assert native[2] == runs
    assert native[3] == pinned
    return libbpf, native


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(BUILT))
def test_built_objects_load_as_with_libbpf(built, name, bpffs):
    libbpf, native = compare(built[name], name, bpffs)
    if name in ("global_data", "calls", "xdp_sections", "tc", "map_kinds", "pinned_map"):  # libbpf 1.1 loads them
        assert not isinstance(libbpf, ProbeError), libbpf
    if name == "tcx":  # libbpf 1.3 names: native loads them wherever libbpf does or not
        assert not isinstance(native, ProbeError), native


@pytest.mark.integration
def test_libxdp_objects_load_as_with_libbpf(bpffs):
    """libbpf 1.1 loads 14 of libxdp1's 15 objects; the native loader loads the same 14 alike and refuses the
    fifteenth (fentry/fexit tracing programs) by name."""
    objects = corpus.libxdp_objects()
    loaded = {"libbpf": [], "native": []}
    for path in objects:
        with open(path, "rb") as f:
            data = f.read()
        label = os.path.basename(path)
        for engine, made in zip(("libbpf", "native"), compare(data, label, bpffs)):
            if not isinstance(made, ProbeError):
                loaded[engine].append(label)
    assert len(objects) == 15 and len(loaded["native"]) == 14
    assert loaded["libbpf"] == loaded["native"] and "xdpdump_bpf.o" not in loaded["native"]


@pytest.mark.integration
def test_global_data_in_the_kernel(built):
    with NativeEngine().load_bytes(built["global_data"]) as obj:
        maps = obj.maps
        s = spec.read_object(built["global_data"])
        for m in s.data_sections:
            assert maps[m.name].lookup(b"\0" * 4) == (m.initial or b"\0" * m.value_size)
        # .rodata is frozen: user space cannot write it any more, programs read it.
        with pytest.raises(KernelError) as e:
            maps[".rodata"].update(b"\0" * 4, b"\1" * 4)
        assert e.value.errno == errno.EPERM
        maps[".data"].update(b"\0" * 4, struct.pack("<III", 8, 0, 5))  # data_var is no longer 7
        assert obj.program("globals").test_run(FRAMES[0])[0] == XDP_ABORTED
        assert struct.unpack("<I", maps[".bss"].lookup(b"\0" * 4)[:4])[0] == 1


@pytest.mark.integration
def test_calls_carry_their_btf(built):
    """The kernel takes each linked program with its BTF: bpftool shows its btf_id and the subprograms' lines."""
    bpftool = tool("bpftool")
    with NativeEngine().load_bytes(built["calls"]) as obj:
        prog_id = obj.program("second").id
        shown = json.loads(subprocess.run([bpftool, "-j", "prog", "show", "id", str(prog_id)],
                                          stdout=subprocess.PIPE, check=True).stdout)
        dump = subprocess.run([bpftool, "prog", "dump", "xlated", "id", str(prog_id)], stdout=subprocess.PIPE,
                              universal_newlines=True, check=True).stdout
        counts = obj.map("calls")
        assert obj.program("second").test_run(FRAMES[1])[0] == XDP_PASS  # through every subprogram
        assert struct.unpack("<Q", counts.lookup(b"\0" * 4))[0] == 1
    assert shown.get("btf_id", 0) > 0
    assert "*(int *)data += 1;" in dump and "return x * 2;" in dump


def devmap_or_cpumap_accepts(map_type, prog_fd):
    """Whether a devmap (on lo) or cpumap entry takes the program: only with its expected attach type."""
    fd = syscall.map_create(syscall.MapCreateAttr(map_type=map_type, key_size=4, value_size=8, max_entries=1))
    try:
        first = 1 if map_type == constants.BPF_MAP_TYPE_DEVMAP else 192  # lo's ifindex, or a queue size
        syscall.map_update(fd, b"\0" * 4, struct.pack("<Ii", first, prog_fd))
        return True
    except KernelError as e:
        assert e.errno in (errno.EINVAL, errno.ENOMEM)  # a cpumap says ENOMEM of any entry it cannot make
        return False
    finally:
        os.close(fd)


@pytest.mark.integration
def test_devmap_cpumap_and_frags_programs(built):
    devmap, cpumap = constants.BPF_MAP_TYPE_DEVMAP, constants.BPF_MAP_TYPE_CPUMAP
    with NativeEngine().load_bytes(built["xdp_sections"]) as obj:
        accepts = {name: (devmap_or_cpumap_accepts(devmap, p.fd), devmap_or_cpumap_accepts(cpumap, p.fd))
                   for name, p in obj.programs.items()}
        big = FRAMES[-1]
        frags_verdict = obj.program("frags").test_run(big)[0]
    assert accepts == {"plain": (False, False), "devmap": (True, False), "cpumap": (False, True),
                       "frags": (False, False), "frags_devmap": (True, False), "frags_cpumap": (False, True)}
    assert frags_verdict == XDP_PASS  # it sees the whole frame, past its first page


@pytest.mark.integration
def test_pinned_map_made_reused_and_refused(built, bpffs):
    path = os.path.join(bpffs, "pinned_counts")
    engine = NativeEngine()
    first = engine.load_bytes(built["pinned_map"], pin_root=bpffs)
    try:
        assert first.pins == [path] and os.path.exists(path)
        first.program("count").test_run(FRAMES[0])
        with engine.load_bytes(built["pinned_map"], pin_root=bpffs) as second:
            assert second.pins == []  # reused, not its own
            assert second.map("pinned_counts").id == first.map("pinned_counts").id
            assert second.map("plain").id != first.map("plain").id
        assert os.path.exists(path)  # the reuser's close leaves the pin
        with pytest.raises(ObjectError) as refused:
            engine.load_bytes(built["pinned_map_8"], pin_root=bpffs)
        assert str(refused.value).startswith("map pinned_counts: the map pinned at %s differs: max_entries 4, "
                                             "declared 8" % path)
        assert "\n" not in str(refused.value)
    finally:
        first.close()
    assert not os.path.exists(path)
    # A devmap's pin has BPF_F_RDONLY_PROG, which the kernel sets and the declaration lacks: reused all the same.
    with engine.load_bytes(built["map_kinds"], pin_root=bpffs) as made:
        assert made.map("ports").flags & constants.BPF_F_RDONLY_PROG and made.pins
        with engine.load_bytes(built["map_kinds"], pin_root=bpffs) as used:
            assert used.map("ports").id == made.map("ports").id and not used.pins
    # A map libbpf pinned is one the native loader takes, and the other way round.
    for maker, user in ((LibbpfEngine(), engine), (engine, LibbpfEngine())):
        with maker.load_bytes(built["pinned_map"], pin_root=bpffs) as made:
            with user.load_bytes(built["pinned_map"], pin_root=bpffs) as used:
                assert used.map("pinned_counts").id == made.map("pinned_counts").id
    assert pins(bpffs) == []


def open_fds():
    return sorted(os.listdir("/proc/self/fd"))


def interrupting_at(stop, real):
    """A bpf() that raises KeyboardInterrupt at its stop-th call, as Ctrl-C would."""
    seen = []

    def interrupting(cmd, attr):
        seen.append(cmd)
        if len(seen) == stop:
            raise KeyboardInterrupt
        return real(cmd, attr)

    return interrupting


@pytest.mark.integration
@pytest.mark.parametrize("name", ["global_data", "calls", "pinned_map"])
def test_interrupted_loads_leave_nothing(built, name, bpffs, monkeypatch):
    """Ctrl-C at any bpf(2) call of a load: no fd stays open, no pin stays made."""
    real = syscall.bpf
    calls = []

    def counting(cmd, attr):
        calls.append(cmd)
        return real(cmd, attr)

    monkeypatch.setattr(syscall, "bpf", counting)
    NativeEngine().load_bytes(built[name], pin_root=bpffs).close()
    total = len(calls)
    assert total > 3
    before = open_fds()
    for stop in range(1, total + 1):
        monkeypatch.setattr(syscall, "bpf", interrupting_at(stop, real))
        with pytest.raises(KeyboardInterrupt):
            NativeEngine().load_bytes(built[name], pin_root=bpffs)
        assert open_fds() == before, "fds left open when interrupted at bpf() call %d of %d" % (stop, total)
        assert pins(bpffs) == [], "pins left when interrupted at bpf() call %d of %d" % (stop, total)


@pytest.mark.integration
def test_native_loader_grows_the_log_buffer_for_the_verifier(tmp_path, monkeypatch):
    """A verifier log longer than the buffer (ENOSPC) is fetched again whole, with the reason at its end."""
    from probe.bpf import native
    monkeypatch.setattr(native, "_LOG_SIZE", 64)
    with pytest.raises(VerifierError) as refused:
        NativeEngine().load_bytes(compile_bpf(tmp_path, bpf_source("unchecked_read.bpf.c")).read_bytes())
    assert refused.value.message == "the verifier rejected the program: R1 offset is outside of the packet"
    assert len(refused.value.log) > 64 and "processed" in refused.value.log


@pytest.mark.integration
def test_native_loader_gives_the_kernel_the_programs_btf():
    """Loaded natively, the program has BTF (bpftool shows its btf_id and source lines), as with libbpf."""
    with NativeEngine().load_bytes(embedded_object()) as obj:
        prog_id = obj.program(layout.PROGRAM).id
        shown = json.loads(subprocess.run([tool("bpftool"), "-j", "prog", "show", "id", str(prog_id)],
                                          stdout=subprocess.PIPE, check=True).stdout)
        dump = subprocess.run([tool("bpftool"), "prog", "dump", "xlated", "id", str(prog_id)], stdout=subprocess.PIPE,
                              universal_newlines=True, check=True).stdout
    assert shown.get("btf_id", 0) > 0
    assert "; __u32 *slot = bpf_map_lookup_elem(&knp_slots, &ifindex);" in dump
