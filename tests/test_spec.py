"""The parsing layer of the native engine: ELF, BTF and ObjectSpec, on the project's object and on damaged ones.

No privileges, no kernel. bpftool, llvm-objdump and clang (installed by `make deps`) serve as references.
"""
import os
import re
import struct
import subprocess

import pytest

from conftest import OBJECT, ROOT, bpf_source, compile_bpf, guarded, tool
from probe import layout
from probe.bpf import btf, constants, elf, spec
from probe.errors import ProbeError

SOURCE = os.path.join(ROOT, "bpf", "kubenetprobe.bpf.c")


@pytest.fixture(scope="module")
def data():
    if not os.path.exists(OBJECT):
        pytest.skip("no %s: run `make build-ebpf`" % OBJECT)
    with open(OBJECT, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def objspec(data):
    return spec.read_object(data)


def run(*argv):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout


def probe_error(parse, data):
    """The ProbeError parse(data) raises; fails if it succeeds, raises anything else or hangs."""
    result, error = guarded(parse, data)
    assert error is not None, "expected a ProbeError, got %r" % (result,)
    assert str(error)
    return str(error)


def section_bounds(data, name):
    section = elf.ElfFile(data).section_by_name(name)
    return section.offset, section.offset + section.size


def raw_sh_name(data, index):
    """sh_name of a section header: where its name starts in the section name table."""
    shoff = struct.unpack_from("<Q", data, 40)[0]
    return struct.unpack_from("<I", data, shoff + index * elf.SHDR_SIZE)[0]


# The project's object

def test_maps(objspec):
    assert sorted(objspec.maps) == sorted(layout.MAPS + layout.PEER_MAPS)
    m = objspec.maps[layout.STATS_MAP]
    assert m.name == layout.STATS_MAP
    assert m.type == constants.BPF_MAP_TYPE_PERCPU_ARRAY == 6
    assert m.key_size == layout.KEY.size == 4
    assert m.value_size == layout.STATS.size
    assert m.max_entries == layout.MAX_ENTRIES == 16386
    assert m.flags == 0
    s = objspec.maps[layout.SLOTS_MAP]
    assert (s.name, s.type, s.key_size, s.value_size, s.max_entries, s.flags) == (
        layout.SLOTS_MAP, constants.BPF_MAP_TYPE_ARRAY, 4, 4, layout.MAX_IFINDEX, 0)


def test_maps_btf_ids(objspec):
    types = btf.parse_btf(objspec.btf)
    for name, value_name in ((layout.STATS_MAP, "knp_stats"), (layout.SLOTS_MAP, None)):
        m = objspec.maps[name]
        key, value = types.type_by_id(m.btf_key_type_id), types.type_by_id(m.btf_value_type_id)
        assert types.size_of(key.id) == m.key_size == 4
        assert types.size_of(value.id) == m.value_size
        if value_name:
            assert (value.kind, value.name) == (btf.BTF_KIND_STRUCT, value_name)


def test_program(objspec):
    assert sorted(objspec.programs) == sorted(list(layout.PROGRAMS.values()) + list(layout.PEER_PROGRAMS.values()))
    assert objspec.programs[layout.PROGRAM].offset == 0
    sections = {"xdp": ("xdp", constants.BPF_PROG_TYPE_XDP), "tc": ("classifier", constants.BPF_PROG_TYPE_SCHED_CLS)}
    for (_, hook), name in list(layout.PROGRAMS.items()) + list(layout.PEER_PROGRAMS.items()):
        prog = objspec.programs[name]
        assert prog.name == name
        assert (prog.section, prog.prog_type) == sections[hook]
        assert prog.instructions and len(prog.instructions) % 8 == 0
        assert prog.map_relocations
        for index, map_name in prog.map_relocations:
            assert map_name in layout.MAPS + layout.PEER_MAPS
            assert prog.instructions[index * 8] == constants.BPF_LD_IMM64
            assert (index + 2) * 8 <= len(prog.instructions)


def test_license_and_btf_sections(objspec, data):
    assert objspec.license == "Dual BSD/GPL"
    assert objspec.byteorder == "little"
    f = elf.ElfFile(data)
    assert objspec.btf_ext == f.section_data(f.section_by_name(".BTF.ext"))
    assert len(objspec.btf) == f.section_by_name(".BTF").size


def test_relocations_match_llvm_objdump(objspec, data):
    text = run(tool("llvm-objdump"), "-r", OBJECT)
    expected = set()
    section = None
    for line in text.splitlines():
        header = re.match(r"RELOCATION RECORDS FOR \[(.*)\]:", line)
        if header:
            section = header.group(1)
            continue
        record = re.match(r"([0-9a-f]{16}) (\S+)\s+(\S+)", line)
        if record and section in {p.section for p in objspec.programs.values()}:
            expected.add((section, int(record.group(1), 16), record.group(2), record.group(3)))
    ours = {(p.section, p.offset + 8 * index, "R_BPF_64_64", name)
            for p in objspec.programs.values() for index, name in p.map_relocations}
    assert ours == expected and expected


def test_btf_types_match_bpftool(data):
    f = elf.ElfFile(data)
    types = btf.parse_btf(f.section_data(f.section_by_name(".BTF")))
    text = run(tool("bpftool"), "btf", "dump", "file", OBJECT, "format", "raw")
    expected = [(int(m.group(1)), m.group(2), m.group(3))
                for m in re.finditer(r"^\[(\d+)\] (\w+) '([^']*)'", text, re.M)]
    ours = [(t.id, t.kind_name, t.name or "(anon)") for t in types.types[1:]]
    assert ours == expected
    # Sizes bpftool prints for sized kinds, and the element counts of arrays.
    for m in re.finditer(r"^\[(\d+)\] (?:STRUCT|UNION|INT|ENUM|DATASEC) '[^']*' size=(\d+)", text, re.M):
        assert types.type_by_id(int(m.group(1))).size == int(m.group(2))
    for m in re.finditer(r"^\[(\d+)\] ARRAY '[^']*' type_id=(\d+) index_type_id=(\d+) nr_elems=(\d+)", text, re.M):
        a = types.type_by_id(int(m.group(1))).array
        assert (a.type, a.index_type, a.nelems) == tuple(int(g) for g in m.groups()[1:])


def test_btf_fixup(objspec, data, tmp_path):
    """As libbpf: clang leaves DATASEC sizes and offsets 0, the loader takes them from the ELF."""
    f = elf.ElfFile(data)
    raw = btf.parse_btf(f.section_data(f.section_by_name(".BTF")))
    fixed = btf.parse_btf(objspec.btf)
    symbols = {s.name: s for s in f.symbols()}
    datasecs = [t for t in raw.types if t.kind == btf.BTF_KIND_DATASEC]
    assert sorted(t.name for t in datasecs) == [".maps", "license"]
    for before in datasecs:
        after = fixed.type_by_id(before.id)
        assert before.size == 0
        assert after.size == f.section_by_name(before.name).size
        for info in after.vars:
            var = fixed.type_by_id(info.type)
            assert info.offset == symbols[var.name].value
            assert info.size == symbols[var.name].size == fixed.size_of(var.id)
    path = tmp_path / "fixed.btf"
    path.write_bytes(objspec.btf)
    text = run(tool("bpftool"), "btf", "dump", "file", str(path), "format", "raw")
    # knp_slots, knp_stats and the 5 talker maps: type, max_entries, key, value each (32 bytes); knp_peer_base's
    # map_flags too
    assert "DATASEC '.maps' size=232 vlen=7" in text
    assert "DATASEC 'license' size=13 vlen=1" in text


def test_fixup_fills_sorts_and_hides():
    # [1] int, [2] VAR a, [3] VAR b, [4] DATASEC '.data' listing b then a, size and offsets 0 as clang leaves them
    strings = b"\0int\0a\0b\0.data\0"
    types = (type_record(1, btf.BTF_KIND_INT, 0, 4) + struct.pack("<I", 32)
             + type_record(5, btf.BTF_KIND_VAR, 0, 1) + struct.pack("<I", btf.BTF_VAR_GLOBAL_ALLOCATED)
             + type_record(7, btf.BTF_KIND_VAR, 0, 1) + struct.pack("<I", btf.BTF_VAR_GLOBAL_ALLOCATED)
             + type_record(9, btf.BTF_KIND_DATASEC, 2, 0) + struct.pack("<IIIIII", 3, 0, 4, 2, 0, 4))
    raw = btf.parse_btf(make_btf(types, strings))
    fixed = btf.parse_btf(btf.fixup_datasecs(raw, {".data": 8}, {"a": 4, "b": 0}, hidden={"b"}))
    datasec = fixed.type_by_id(4)
    assert datasec.size == 8
    assert [(v.type, v.offset, v.size) for v in datasec.vars] == [(3, 0, 4), (2, 4, 4)]
    assert (fixed.type_by_id(2).linkage, fixed.type_by_id(3).linkage) == (btf.BTF_VAR_GLOBAL_ALLOCATED,
                                                                          btf.BTF_VAR_STATIC)
    assert "no ELF symbol for variable 'a'" in probe_error(
        lambda t: btf.fixup_datasecs(t, {".data": 8}, {"b": 0}), raw)
    assert "DATASEC '.data': no ELF section" in probe_error(lambda t: btf.fixup_datasecs(t, {}, {}), raw)
    assert "variable 'a' at 6 (4 bytes) is outside its section" in probe_error(
        lambda t: btf.fixup_datasecs(t, {".data": 8}, {"a": 6, "b": 0}), raw)


def test_size_of_resolves_typedefs_qualifiers_and_arrays():
    strings = b"\0int\0myint\0"
    types = (type_record(1, btf.BTF_KIND_INT, 0, 4) + struct.pack("<I", 32)   # [1] int
             + type_record(5, btf.BTF_KIND_TYPEDEF, 0, 1)                     # [2] typedef int myint
             + type_record(0, btf.BTF_KIND_CONST, 0, 2)                       # [3] const myint
             + type_record(0, btf.BTF_KIND_VOLATILE, 0, 3)                    # [4] volatile const myint
             + type_record(0, btf.BTF_KIND_ARRAY, 0, 0) + struct.pack("<III", 4, 1, 3)  # [5] [3]
             + type_record(0, btf.BTF_KIND_ARRAY, 0, 0) + struct.pack("<III", 5, 1, 2)  # [6] [2][3]
             + type_record(0, btf.BTF_KIND_PTR, 0, 6))                        # [7] pointer
    types_btf = btf.parse_btf(make_btf(types, strings))
    assert [types_btf.size_of(i) for i in range(1, 8)] == [4, 4, 4, 4, 12, 24, 8]
    assert types_btf.skip_modifiers(4).name == "int"
    assert "has no size" in probe_error(types_btf.size_of, 0)


# Damaged objects

def test_truncated_everywhere(data):
    lengths = list(range(0, len(data), 37)) + [len(data) - 1]
    for length in lengths:
        result, error = guarded(spec.read_object, data[:length])
        if error is None:
            assert isinstance(result, spec.ObjectSpec)  # a prefix that happens to be complete
            continue
        assert re.search(r"truncated|not an ELF", str(error)), (length, str(error))


def test_wrong_machine(data):
    patched = bytearray(data)
    struct.pack_into("<H", patched, 18, 62)  # e_machine = EM_X86_64
    assert "not a BPF object: machine 62" in probe_error(spec.read_object, bytes(patched))


@pytest.mark.parametrize("blob", [b"", b"\x7fEL", b"hello, world", b"#!/bin/sh\n" * 20, b"\0" * 64])
def test_not_elf(blob):
    assert "not an ELF object" in probe_error(spec.read_object, blob)


def test_32_bit_class(data):
    patched = bytearray(data)
    patched[elf.EI_CLASS] = elf.ELFCLASS32
    assert "ELF class 1 (expected ELFCLASS64" in probe_error(spec.read_object, bytes(patched))


def test_relocation_to_missing_map_by_symbol_index(data, objspec):
    f = elf.ElfFile(data)
    license_index = [s.index for s in f.symbols() if s.name == "LICENSE"][0]
    rel_section = f.section_by_name(".relxdp")
    patched = bytearray(data)
    # The first Elf64_Rel's r_info: symbol index in the top 32 bits, type in the bottom 32.
    struct.pack_into("<Q", patched, rel_section.offset + 8, license_index << 32 | elf.R_BPF_64_64)
    message = probe_error(spec.read_object, bytes(patched))
    assert "relocation to missing map 'LICENSE'" in message
    assert "program 'kubenetprobe_rx' instruction %d" % objspec.programs[layout.PROGRAM].map_relocations[0][0] \
        in message


def test_relocation_to_missing_map_by_symbol_name(data):
    start, end = section_bounds(data, ".strtab")
    at = data.index(b"\0knp_stats\0", start, end) + 1
    patched = data[:at] + b"xnp_stats" + data[at + len(b"knp_stats"):]
    assert "relocation to missing map 'xnp_stats'" in probe_error(spec.read_object, patched)


def test_relocation_not_on_ld_imm64(data, objspec):
    index = objspec.programs[layout.PROGRAM].map_relocations[0][0]
    start, _ = section_bounds(data, "xdp")
    patched = bytearray(data)
    patched[start + 8 * index] = 0xb7  # mov r, imm
    assert "not a whole ld_imm64" in probe_error(spec.read_object, bytes(patched))


def test_unknown_program_section(data):
    f = elf.ElfFile(data)
    names = f.section_by_name(".strtab")
    section = f.section_by_name("xdp")
    # The name may be the tail of ".relxdp": overwrite it where the section header points.
    at = names.offset + raw_sh_name(data, section.index)
    assert data[at:at + 4] == b"xdp\0"
    patched = data[:at] + b"tcx" + data[at + 3:]
    assert "section 'tcx': unknown program type" in probe_error(spec.read_object, patched)


def test_btf_header_lying_about_lengths(data):
    start, end = section_bounds(data, ".BTF")
    for field, what in ((12, "type section"), (20, "string section")):  # type_len, str_len
        patched = bytearray(data)
        length = struct.unpack_from("<I", patched, start + field)[0]
        struct.pack_into("<I", patched, start + field, length + end - start)  # past the end, whatever the size
        message = probe_error(spec.read_object, bytes(patched))
        assert "malformed BTF: %s" % what in message and "runs past the end" in message


def test_btf_lengths_lying_in_a_tiny_blob():
    good = make_btf(type_record(1, btf.BTF_KIND_INT, 0, 4) + struct.pack("<I", 32), b"\0int\0")
    assert btf.parse_btf(good).type_by_id(1).name == "int"
    for field, value, expected in ((8, 0xffffffff, "type section"), (12, 13, "type section"),
                                   (16, 1 << 31, "string section"), (20, 6, "string section"),
                                   (4, 1 << 20, "header length")):
        blob = bytearray(good)
        struct.pack_into("<I", blob, field, value)
        assert expected in probe_error(btf.parse_btf, bytes(blob))
    assert "not BTF: magic" in probe_error(btf.parse_btf, b"\0" * 32)
    assert "truncated BTF" in probe_error(btf.parse_btf, good[:10])


# BTF type loops, in blobs built by hand

def type_record(name_off, kind, vlen, size_or_type, kind_flag=0):
    return struct.pack("<III", name_off, kind_flag << 31 | kind << 24 | vlen, size_or_type)


def make_btf(types, strings):
    """A little-endian BTF blob: header, type section, string section."""
    header = struct.pack("<HBBIIIII", btf.BTF_MAGIC, btf.BTF_VERSION, 0, btf.HEADER_SIZE,
                         0, len(types), len(types), len(strings))
    return header + types + strings


def test_typedef_to_itself():
    blob = make_btf(type_record(1, btf.BTF_KIND_TYPEDEF, 0, 1), b"\0a\0")
    message = probe_error(btf.parse_btf, blob)
    assert message == "BTF type loop: [1] TYPEDEF 'a' -> [1] TYPEDEF 'a'"


def test_two_typedef_cycle():
    blob = make_btf(type_record(1, btf.BTF_KIND_TYPEDEF, 0, 2) + type_record(3, btf.BTF_KIND_TYPEDEF, 0, 1),
                    b"\0a\0b\0")
    message = probe_error(btf.parse_btf, blob)
    assert message == "BTF type loop: [1] TYPEDEF 'a' -> [2] TYPEDEF 'b' -> [1] TYPEDEF 'a'"


def test_loop_through_pointer_const_and_array():
    blob = make_btf(type_record(0, btf.BTF_KIND_PTR, 0, 2) + type_record(0, btf.BTF_KIND_CONST, 0, 3)
                    + type_record(0, btf.BTF_KIND_ARRAY, 0, 0) + struct.pack("<III", 1, 0, 4), b"\0")
    assert probe_error(btf.parse_btf, blob).startswith("BTF type loop: [1] PTR '' -> [2] CONST '' -> [3] ARRAY")


def test_self_referencing_struct_is_no_loop():
    # struct list { struct list *next; }: a pointer back to a struct is how C says it, not a loop.
    strings = b"\0list\0next\0"
    blob = make_btf(type_record(1, btf.BTF_KIND_STRUCT, 1, 8) + struct.pack("<III", 6, 2, 0)
                    + type_record(0, btf.BTF_KIND_PTR, 0, 1), strings)
    types = btf.parse_btf(blob)
    assert types.size_of(1) == 8 and types.size_of(2) == 8
    assert types.type_by_id(1).members[0].name == "next"


def test_reference_past_the_last_type():
    blob = make_btf(type_record(1, btf.BTF_KIND_TYPEDEF, 0, 7), b"\0a\0")
    assert "refers to type [7], past the last type [1]" in probe_error(btf.parse_btf, blob)


# Random damage: a spec or a ProbeError, never another exception, never a hang

# Objects compiled here, with clang: several programs and maps, and big-endian BPF

def test_several_programs_and_maps(tmp_path):
    path = compile_bpf(tmp_path, bpf_source("several_programs_and_maps.bpf.c"))
    blob = path.read_bytes()
    s = spec.read_object(blob)
    first, second = s.maps["first"], s.maps["second"]
    assert (first.type, first.key_size, first.value_size, first.max_entries, first.flags) == (2, 4, 8, 1, 0)
    assert first.btf_key_type_id and first.btf_value_type_id
    assert (second.type, second.key_size, second.value_size, second.max_entries, second.flags) == (1, 4, 8, 8, 1)
    assert (second.btf_key_type_id, second.btf_value_type_id) == (0, 0)
    assert sorted(s.programs) == ["prog_a", "prog_b", "prog_c"]
    a, b, c = (s.programs[n] for n in ("prog_a", "prog_b", "prog_c"))
    assert (a.section, b.section, c.section) == ("xdp", "xdp", "xdp/other")
    assert a.offset == 0 and b.offset == len(a.instructions) and c.offset == 0
    assert [n for _, n in a.map_relocations] == ["first"]
    assert [n for _, n in b.map_relocations] == ["second", "first"]
    assert [n for _, n in c.map_relocations] == ["second"]
    for p in (a, b, c):
        assert p.prog_type == constants.BPF_PROG_TYPE_XDP
        assert all(p.instructions[8 * i] == constants.BPF_LD_IMM64 for i, _ in p.map_relocations)
    # The same relocations as llvm-objdump's, counted from each section's start.
    text = run(tool("llvm-objdump"), "-r", str(path))
    expected = {(sec, int(off, 16), sym) for sec, body in re.findall(r"RELOCATION RECORDS FOR \[(.*?)\]:\n(.*?)\n\n",
                                                                       text + "\n\n", re.S)
                if sec in ("xdp", "xdp/other")
                for off, sym in re.findall(r"^([0-9a-f]{16}) R_BPF_64_64\s+(\S+)", body, re.M)}
    ours = {(p.section, p.offset + 8 * i, n) for p in (a, b, c) for i, n in p.map_relocations}
    assert ours == expected and len(ours) == 4


def test_unknown_program_type_compiled(tmp_path):
    blob = compile_bpf(tmp_path, bpf_source("unknown_section.bpf.c")).read_bytes()
    assert "section 'knp_unknown': unknown program type" in probe_error(spec.read_object, blob)


@pytest.mark.parametrize("members, expected", [
    ("__uint(flavour, 1);", "map 'bad': member 'flavour' is not supported"),
    ("__uint(key_size, 8);", "map 'bad': key_size 8 disagrees with the size of its key type, 4"),
])
def test_bad_map_definitions(tmp_path, members, expected):
    source = "#define BAD_MAP_MEMBERS %s\n" % members + bpf_source("bad_map.bpf.c")
    blob = compile_bpf(tmp_path, source).read_bytes()
    assert expected in probe_error(spec.read_object, blob)


def test_big_endian_object(tmp_path, objspec):
    with open(SOURCE) as f:
        blob = compile_bpf(tmp_path, f.read(), target="bpfeb").read_bytes()
    assert blob[elf.EI_DATA] == elf.ELFDATA2MSB
    s = spec.read_object(blob)
    assert s.byteorder == "big" and s.license == objspec.license
    for name, m in objspec.maps.items():
        assert repr(s.maps[name]) == repr(m)
    for name, p in objspec.programs.items():
        # Not the same instructions as little-endian: clang compiles byte-order dependent code differently. The
        # same maps, in the same order, each relocated at a 64-bit immediate load (opcode 0x18, first byte both ways).
        insns = s.programs[name].instructions
        assert insns and len(insns) % 8 == 0
        relocations = s.programs[name].map_relocations
        assert [m for _, m in relocations] == [m for _, m in p.map_relocations]
        assert all(insns[index * 8] == 0x18 for index, _ in relocations)
    fixed = btf.parse_btf(s.btf)
    assert fixed.byteorder == ">"
    assert fixed.find(".maps", btf.BTF_KIND_DATASEC).size == 232


def test_func_and_line_info(objspec, data):
    """.BTF.ext's records, per program, counted in instructions from the program's start."""
    prog = objspec.programs[layout.PROGRAM]
    rec_size, records = prog.func_info
    assert rec_size == 8 and len(records) == 8  # one function, the program, at instruction 0
    insn, type_id = struct.unpack("<II", records)
    assert insn == 0
    f = elf.ElfFile(data)
    func = btf.parse_btf(f.section_data(f.section_by_name(".BTF"))).type_by_id(type_id)
    assert (func.kind, func.name) == (btf.BTF_KIND_FUNC, layout.PROGRAM)
    rec_size, records = prog.line_info
    insns = [struct.unpack_from("<I", records, i)[0] for i in range(0, len(records), rec_size)]
    assert rec_size == 16 and len(insns) > 10
    assert insns == sorted(insns) and insns[0] == 0 and insns[-1] < len(prog.instructions) // 8


@pytest.mark.parametrize("damage", ["magic", "records past the end", "record size"])
def test_damaged_btf_ext(data, damage):
    f = elf.ElfFile(data)
    section = f.section_by_name(".BTF.ext")
    blob = bytearray(data)
    start = section.offset
    hdr_len, func_off = struct.unpack_from("<II", blob, start + 4)
    if damage == "magic":
        blob[start] ^= 0xFF
    elif damage == "records past the end":
        struct.pack_into("<I", blob, start + hdr_len + func_off + 8, 1 << 20)  # num_info of the first block
    else:
        struct.pack_into("<I", blob, start + hdr_len + func_off, 3)
    with pytest.raises(ProbeError) as e:
        spec.read_object(bytes(blob))
    assert ".BTF.ext" in str(e.value)
