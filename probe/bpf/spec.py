"""ObjectSpec: the maps and programs of a BPF ELF object, read and checked before anything is loaded."""
import struct

from probe.bpf import btf as _btf
from probe.bpf import elf
from probe.bpf.constants import BPF_INSN_SIZE, BPF_LD_IMM64, BPF_PROG_TYPE_XDP
from probe.errors import ObjectError

MAPS_SECTION = ".maps"
LICENSE_SECTION = "license"
BTF_SECTION = ".BTF"
BTF_EXT_SECTION = ".BTF.ext"

# Program section name (or its prefix before "/") -> program type.
PROGRAM_TYPES = {
    "xdp": BPF_PROG_TYPE_XDP,
}

# Members of a BTF-defined map's struct that hold a number (`__uint`).
_MAP_INT_MEMBERS = ("type", "max_entries", "map_flags", "key_size", "value_size")


class MapSpec(object):
    """A map as the object declares it, with the BTF ids of its key and value (0 when not typed)."""

    __slots__ = ("name", "type", "key_size", "value_size", "max_entries", "flags", "btf_key_type_id",
                 "btf_value_type_id")

    def __init__(self, name, type=0, key_size=0, value_size=0, max_entries=0, flags=0, btf_key_type_id=0,
                 btf_value_type_id=0):
        self.name = name
        self.type = type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.btf_key_type_id = btf_key_type_id
        self.btf_value_type_id = btf_value_type_id

    def __repr__(self):
        return "MapSpec(%s)" % ", ".join("%s=%r" % (f, getattr(self, f)) for f in self.__slots__)


class ProgramSpec(object):
    """A program: its instructions as in the object, and where they load a map's address."""

    __slots__ = ("name", "section", "prog_type", "instructions", "map_relocations", "offset", "func_info",
                 "line_info")

    def __init__(self, name, section, prog_type, instructions, map_relocations, offset=0):
        self.name = name
        self.section = section
        self.prog_type = prog_type
        self.instructions = instructions  # bytes, 8 per instruction
        self.map_relocations = map_relocations  # [(index in instructions, map name)], each on an ld_imm64
        self.offset = offset  # in its section, in bytes: what .BTF.ext's func and line info count from
        # (record size, bytes) of the program's bpf_func_info and bpf_line_info records for BPF_PROG_LOAD,
        # their instruction offsets counted in instructions from the program's start; None without .BTF.ext.
        self.func_info = None
        self.line_info = None

    def __repr__(self):
        return "ProgramSpec(%r, section=%r, prog_type=%d, %d instructions, map_relocations=%r)" % (
            self.name, self.section, self.prog_type, len(self.instructions) // BPF_INSN_SIZE, self.map_relocations)


class ObjectSpec(object):
    """Everything a loader needs from an object, nothing loaded yet."""

    def __init__(self, maps, programs, license, btf, btf_ext, byteorder):
        self.maps = maps  # name -> MapSpec
        self.programs = programs  # name -> ProgramSpec
        self.license = license  # str, or None without a license section
        self.btf = btf  # the .BTF blob with its DATASECs fixed up for BPF_BTF_LOAD, or None
        self.btf_ext = btf_ext  # the .BTF.ext section as is, or None
        self.byteorder = byteorder  # "little" or "big": the object's, which must be the kernel's

    def __repr__(self):
        return "ObjectSpec(maps=%s, programs=%s, license=%r)" % (sorted(self.maps), sorted(self.programs),
                                                                 self.license)


def read_object(data):
    """Read an ELF BPF object (bytes) into an ObjectSpec; anything wrong raises ObjectError."""
    f = elf.ElfFile(data)
    if f.section_by_name("maps") is not None:
        raise ObjectError("legacy 'maps' section (struct bpf_map_def) is not supported: declare maps in '.maps'")
    btf_section = f.section_by_name(BTF_SECTION)
    types = _btf.parse_btf(f.section_data(btf_section)) if btf_section is not None else None
    maps = _read_maps(f, types)
    programs = _read_programs(f, maps)
    license = None
    license_section = f.section_by_name(LICENSE_SECTION)
    if license_section is not None:
        license = f.section_data(license_section).split(b"\0")[0].decode("ascii", "replace")
    btf_ext_section = f.section_by_name(BTF_EXT_SECTION)
    # Like libbpf, .BTF.ext is ignored without the .BTF its records point into.
    btf_ext = f.section_data(btf_ext_section) if btf_ext_section is not None and types else None
    if btf_ext is not None:
        _attach_ext_infos(_btf.parse_ext_infos(btf_ext, types), programs, types.byteorder)
    return ObjectSpec(maps, programs, license, _fixed_up_btf(f, types), btf_ext,
                      "little" if f.byteorder == "<" else "big")


def _read_maps(f, types):
    """MapSpecs from the BTF description of the `.maps` section."""
    section = f.section_by_name(MAPS_SECTION)
    if section is None:
        return {}
    if types is None:
        raise ObjectError("the object has a '.maps' section but no BTF to describe it")
    datasec = types.find(MAPS_SECTION, _btf.BTF_KIND_DATASEC)
    if datasec is None:
        raise ObjectError("the object's BTF has no DATASEC for its '.maps' section")
    maps = {}
    for info in datasec.vars:
        var = types.type_by_id(info.type)
        if var.kind != _btf.BTF_KIND_VAR:
            raise ObjectError("'.maps' holds %s, not a map variable" % var.describe())
        if var.name in maps:
            raise ObjectError("map '%s' is declared twice" % var.name)
        if var.linkage == _btf.BTF_VAR_GLOBAL_EXTERN:
            raise ObjectError("map '%s' is extern: declare it in this object" % var.name)
        maps[var.name] = _map_spec(types, var)
    return maps


def _map_spec(types, var):
    """A MapSpec from a map variable: a struct whose members are `__uint(name, value)` or `__type(name, T)`."""
    definition = types.skip_modifiers(var.type)
    if definition.kind != _btf.BTF_KIND_STRUCT:
        raise ObjectError("map '%s': its definition is %s, not a struct" % (var.name, definition.describe()))
    numbers, typed = {}, {}
    for member in definition.members:
        if member.name in _MAP_INT_MEMBERS:
            numbers[member.name] = _map_int(types, var.name, member)
        elif member.name in ("key", "value"):
            typed[member.name] = _map_type(types, var.name, member)
        else:
            raise ObjectError("map '%s': member '%s' is not supported" % (var.name, member.name))
    map_spec = MapSpec(var.name, type=numbers.get("type", 0), max_entries=numbers.get("max_entries", 0),
                       flags=numbers.get("map_flags", 0))
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
    return map_spec


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


def _read_programs(f, maps):
    """ProgramSpecs: every function symbol of every code section, with its map relocations."""
    programs = {}
    by_section = {}
    for section in f.sections:
        if not _is_program_section(section):
            continue
        prog_type = _program_type(section.name)
        code = f.section_data(section)
        found = _section_programs(f, section, prog_type, code)
        for spec in found:
            if spec.name in programs:
                raise ObjectError("program '%s' is defined twice" % spec.name)
            programs[spec.name] = spec
        by_section[section.index] = found
    for section in f.sections:
        if section.type not in (elf.SHT_REL, elf.SHT_RELA) or section.info not in by_section:
            continue
        target = f.sections[section.info]
        if section.type == elf.SHT_RELA:
            raise ObjectError("section '%s': RELA relocations are not supported in BPF objects" % target.name)
        _relocate(f, target, by_section[section.info], f.relocations(section), maps)
    return programs


def _is_program_section(section):
    # .text holds subprograms (called with bpf-to-bpf calls), which are not programs by themselves.
    return (section.type == elf.SHT_PROGBITS and section.flags & elf.SHF_EXECINSTR and section.size > 0
            and section.name != ".text")


def _program_type(section_name):
    prog_type = PROGRAM_TYPES.get(section_name.split("/", 1)[0])
    if prog_type is None:
        raise ObjectError("section '%s': unknown program type (known: %s)" %
                         (section_name, ", ".join(sorted(PROGRAM_TYPES))))
    return prog_type


def _section_programs(f, section, prog_type, code):
    """The programs of one code section, one per function symbol, in offset order."""
    functions = sorted((s for s in f.symbols() if s.shndx == section.index and s.type == elf.STT_FUNC),
                       key=lambda s: s.value)
    if not functions:
        raise ObjectError("section '%s' has code but no function symbol" % section.name)
    programs = []
    end = 0
    for sym in functions:
        where = "program '%s' in section '%s'" % (sym.name, section.name)
        if sym.bind == elf.STB_LOCAL:
            raise ObjectError("%s is static: programs must be global functions" % where)
        if sym.value % BPF_INSN_SIZE or sym.size % BPF_INSN_SIZE or sym.size == 0:
            raise ObjectError("%s: offset %d and size %d are not whole instructions" % (where, sym.value, sym.size))
        if sym.value < end or sym.value + sym.size > len(code):
            raise ObjectError("%s: bytes %d..%d overlap another program or leave the section (%d bytes)" %
                             (where, sym.value, sym.value + sym.size, len(code)))
        end = sym.value + sym.size
        programs.append(ProgramSpec(sym.name, section.name, prog_type, code[sym.value:end], [], sym.value))
    return programs


def _relocate(f, section, programs, relocations, maps):
    """Record each relocation of a code section as (instruction index, map name) of its program."""
    for rel in relocations:
        if rel.type == elf.R_BPF_NONE:
            continue
        program = _program_at(section, programs, rel.offset)
        index = (rel.offset - program.offset) // BPF_INSN_SIZE
        where = "program '%s' instruction %d" % (program.name, index)
        name = rel.symbol.name or "symbol %d" % rel.symbol.index
        if rel.type != elf.R_BPF_64_64:
            raise ObjectError("%s: relocation %s to '%s' is not supported (only map references are)" %
                             (where, elf.RELOCATION_NAMES.get(rel.type, rel.type), name))
        if rel.symbol.name not in maps:
            raise ObjectError("%s: relocation to missing map '%s'" % (where, name))
        home = f.sections[rel.symbol.shndx].name if rel.symbol.shndx < len(f.sections) else None
        if home != MAPS_SECTION:
            raise ObjectError("%s: relocation to missing map '%s' (its symbol is in section %r, not '%s')" %
                             (where, name, home, MAPS_SECTION))
        opcode = program.instructions[index * BPF_INSN_SIZE]
        if opcode != BPF_LD_IMM64 or (index + 2) * BPF_INSN_SIZE > len(program.instructions):
            raise ObjectError("%s: relocation to map '%s' on opcode 0x%02x, not a whole ld_imm64" %
                             (where, name, opcode))
        program.map_relocations.append((index, rel.symbol.name))


def _attach_ext_infos(infos, programs, order):
    """Give each program its func_info and line_info records, offsets turned into its own instruction indexes."""
    for what, (rec_size, sections) in sorted(infos.items()):
        for program in programs.values():
            start, end = program.offset, program.offset + len(program.instructions)
            records = []
            for record in sections.get(program.section, ()):
                insn_off = struct.unpack_from(order + "I", record)[0]
                if start <= insn_off < end:
                    if insn_off % BPF_INSN_SIZE:
                        raise ObjectError("program '%s': %s at byte %d, not on an instruction" %
                                         (program.name, what, insn_off))
                    records.append(struct.pack(order + "I", (insn_off - start) // BPF_INSN_SIZE) + record[4:])
            setattr(program, what, (rec_size, b"".join(records)) if records else None)


def _program_at(section, programs, offset):
    if offset % BPF_INSN_SIZE:
        raise ObjectError("section '%s': relocation at offset %d is not on an instruction" % (section.name, offset))
    for program in programs:
        if program.offset <= offset < program.offset + len(program.instructions):
            return program
    raise ObjectError("section '%s': relocation at offset %d is outside every program" % (section.name, offset))


def _fixed_up_btf(f, types):
    """The .BTF blob with sizes and offsets filled in from the ELF, as libbpf does before loading it."""
    if types is None:
        return None
    sizes = {}
    for section in f.sections:
        sizes.setdefault(section.name, section.size)
    values, hidden = {}, set()
    # As libbpf's find_elf_var_sym: the first global or weak data symbol of the name.
    for sym in f.symbols():
        if sym.type != elf.STT_OBJECT or sym.bind not in (elf.STB_GLOBAL, elf.STB_WEAK) or sym.name in values:
            continue
        values[sym.name] = sym.value
        if sym.visibility in (elf.STV_HIDDEN, elf.STV_INTERNAL):
            hidden.add(sym.name)
    return _btf.fixup_datasecs(types, sizes, values, hidden)
