"""A minimal ELF64 reader for BPF objects: header, sections, symbols, REL relocations."""
import collections
import struct

from probe.errors import ObjectError

# elf.h: e_ident
ELFMAG = b"\x7fELF"
EI_CLASS = 4
EI_DATA = 5
EI_VERSION = 6
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
EV_CURRENT = 1

# e_type, e_machine
ET_REL = 1
EM_BPF = 247

# sh_type
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9

# sh_flags
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

# Special section indices
SHN_UNDEF = 0

# Symbol binding, type, visibility (st_info >> 4, st_info & 0xf, st_other & 0x3)
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4
STV_DEFAULT = 0
STV_INTERNAL = 1
STV_HIDDEN = 2
STV_PROTECTED = 3

# BPF relocation types (llvm's ELFRelocs/BPF.def)
R_BPF_NONE = 0
R_BPF_64_64 = 1
R_BPF_64_ABS64 = 2
R_BPF_64_ABS32 = 3
R_BPF_64_NODYLD32 = 4
R_BPF_64_32 = 10

RELOCATION_NAMES = {
    R_BPF_NONE: "R_BPF_NONE",
    R_BPF_64_64: "R_BPF_64_64",
    R_BPF_64_ABS64: "R_BPF_64_ABS64",
    R_BPF_64_ABS32: "R_BPF_64_ABS32",
    R_BPF_64_NODYLD32: "R_BPF_64_NODYLD32",
    R_BPF_64_32: "R_BPF_64_32",
}

_IDENT_SIZE = 16
# Elf64_Ehdr (after e_ident), Elf64_Shdr, Elf64_Sym, Elf64_Rel
_Ehdr = collections.namedtuple("Elf64_Ehdr", "e_type e_machine e_version e_entry e_phoff e_shoff e_flags "
                                             "e_ehsize e_phentsize e_phnum e_shentsize e_shnum e_shstrndx")
_Shdr = collections.namedtuple("Elf64_Shdr", "sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link "
                                             "sh_info sh_addralign sh_entsize")
_Sym = collections.namedtuple("Elf64_Sym", "st_name st_info st_other st_shndx st_value st_size")
_Rel = collections.namedtuple("Elf64_Rel", "r_offset r_info")
_LAYOUTS = ((_Ehdr, "HHIQQQIHHHHHH"), (_Shdr, "IIQQQQIIQQ"), (_Sym, "IBBHQQ"), (_Rel, "QQ"))
_FORMATS = {order: {t: struct.Struct(order + fmt) for t, fmt in _LAYOUTS} for order in "<>"}
EHDR_SIZE = _IDENT_SIZE + _FORMATS["<"][_Ehdr].size
SHDR_SIZE = _FORMATS["<"][_Shdr].size
SYM_SIZE = _FORMATS["<"][_Sym].size
REL_SIZE = _FORMATS["<"][_Rel].size


def unpack(fmt, data, offset, what):
    """struct.unpack_from that says what was cut short instead of raising struct.error."""
    size = fmt.size
    if offset < 0 or offset + size > len(data):
        raise ObjectError("truncated object: %s needs bytes %d..%d, the data has %d" %
                         (what, offset, offset + size, len(data)))
    return fmt.unpack_from(data, offset)


def cstring(data, offset, what):
    """The NUL-terminated string at `offset` of a string table, decoded for display."""
    if offset < 0 or offset >= len(data):
        raise ObjectError("%s: string offset %d is outside its table (%d bytes)" % (what, offset, len(data)))
    end = data.find(b"\0", offset)
    if end < 0:
        raise ObjectError("%s: string at offset %d is not terminated" % (what, offset))
    return data[offset:end].decode("utf-8", "replace")


class Section(object):
    """One section header, with its name."""

    __slots__ = ("index", "name", "type", "flags", "offset", "size", "link", "info", "addralign", "entsize")

    def __init__(self, index, name, hdr):
        self.index = index
        self.name = name
        self.type = hdr.sh_type
        self.flags = hdr.sh_flags
        self.offset = hdr.sh_offset
        self.size = hdr.sh_size
        self.link = hdr.sh_link
        self.info = hdr.sh_info
        self.addralign = hdr.sh_addralign
        self.entsize = hdr.sh_entsize

    def __repr__(self):
        return "Section(%d, %r, type=%d, size=%d)" % (self.index, self.name, self.type, self.size)


class Symbol(object):
    """One symbol table entry, with its name."""

    __slots__ = ("index", "name", "value", "size", "bind", "type", "visibility", "shndx")

    def __init__(self, index, name, raw):
        self.index = index
        self.name = name
        self.value = raw.st_value
        self.size = raw.st_size
        self.bind = raw.st_info >> 4
        self.type = raw.st_info & 0xf
        self.visibility = raw.st_other & 0x3
        self.shndx = raw.st_shndx

    def __repr__(self):
        return "Symbol(%d, %r, shndx=%d, value=%d, size=%d)" % (self.index, self.name, self.shndx, self.value,
                                                               self.size)


class Relocation(object):
    """One Elf64_Rel entry: where, what kind, against which symbol."""

    __slots__ = ("offset", "type", "symbol")

    def __init__(self, offset, type, symbol):
        self.offset = offset
        self.type = type
        self.symbol = symbol  # a Symbol

    def __repr__(self):
        return "Relocation(%d, %s, %r)" % (self.offset, RELOCATION_NAMES.get(self.type, self.type),
                                           self.symbol.name)


class ElfFile(object):
    """An ELF64 BPF object held in memory: its sections, symbols and relocations."""

    def __init__(self, data):
        self.data = bytes(data)
        self.byteorder = _check_ident(self.data)
        self.header = self._unpack(_Ehdr, self.data, _IDENT_SIZE, "the ELF header")
        self._check_header()
        self.sections = self._read_sections()
        self._symbols = None

    def _unpack(self, raw_type, data, offset, what):
        return raw_type._make(unpack(_FORMATS[self.byteorder][raw_type], data, offset, what))

    def _check_header(self):
        h = self.header
        if h.e_machine != EM_BPF:
            raise ObjectError("not a BPF object: machine %d (expected EM_BPF, %d)" % (h.e_machine, EM_BPF))
        if h.e_type != ET_REL:
            raise ObjectError("not a BPF object file: ELF type %d (expected ET_REL, %d)" % (h.e_type, ET_REL))
        if h.e_shnum == 0 or h.e_shoff == 0:
            raise ObjectError("malformed ELF: no section headers")
        if h.e_shentsize != SHDR_SIZE:
            raise ObjectError("malformed ELF: section header size %d (expected %d)" % (h.e_shentsize, SHDR_SIZE))
        if h.e_shstrndx >= h.e_shnum:
            raise ObjectError("malformed ELF: section name table index %d of %d sections" %
                             (h.e_shstrndx, h.e_shnum))

    def _read_sections(self):
        h = self.header
        end = h.e_shoff + h.e_shnum * SHDR_SIZE
        if end > len(self.data):
            raise ObjectError("truncated object: %d section headers at offset %d end at %d, the data has %d bytes" %
                             (h.e_shnum, h.e_shoff, end, len(self.data)))
        headers = [self._unpack(_Shdr, self.data, h.e_shoff + i * SHDR_SIZE, "section header %d" % i)
                   for i in range(h.e_shnum)]
        names = Section(h.e_shstrndx, "", headers[h.e_shstrndx])
        if names.type != SHT_STRTAB:
            raise ObjectError("malformed ELF: section name table (section %d) is not a string table" % names.index)
        table = self._bounded(names, "the section name table")
        return [Section(i, cstring(table, hdr.sh_name, "name of section %d" % i), hdr)
                for i, hdr in enumerate(headers)]

    def _bounded(self, section, what):
        if section.offset + section.size > len(self.data):
            raise ObjectError("truncated object: %s (offset %d, %d bytes) runs past the end (%d bytes)" %
                             (what, section.offset, section.size, len(self.data)))
        return self.data[section.offset:section.offset + section.size]

    def section_data(self, section):
        """The bytes of a section; empty for SHT_NOBITS, which has none in the file."""
        if section.type in (SHT_NULL, SHT_NOBITS):
            return b""
        return self._bounded(section, "section %r" % section.name)

    def section_by_name(self, name):
        """The first section with this name, or None."""
        for section in self.sections:
            if section.name == name:
                return section
        return None

    def section_by_index(self, index, what):
        """The section at an index taken from the file, checked."""
        if not 0 <= index < len(self.sections):
            raise ObjectError("malformed ELF: %s refers to section %d of %d" % (what, index, len(self.sections)))
        return self.sections[index]

    def symbols(self):
        """Every entry of the one symbol table (SHT_SYMTAB), index 0 included."""
        if self._symbols is None:
            tables = [s for s in self.sections if s.type == SHT_SYMTAB]
            if len(tables) != 1:
                raise ObjectError("malformed BPF object: %d symbol tables (expected one; was it stripped?)" %
                                 len(tables))
            self._symbols = self._read_symbols(tables[0])
        return self._symbols

    def _read_symbols(self, table):
        if table.entsize != SYM_SIZE or table.size % SYM_SIZE:
            raise ObjectError("malformed ELF: symbol table entries of %d bytes in %d (expected %d each)" %
                             (table.entsize, table.size, SYM_SIZE))
        data = self._bounded(table, "the symbol table")
        strings = self.section_by_index(table.link, "the symbol table's string table")
        if strings.type != SHT_STRTAB:
            raise ObjectError("malformed ELF: the symbol table's string table (section %d) is not one" %
                             strings.index)
        names = self._bounded(strings, "the symbol string table")
        symbols = []
        for i in range(table.size // SYM_SIZE):
            raw = self._unpack(_Sym, data, i * SYM_SIZE, "symbol %d" % i)
            symbols.append(Symbol(i, cstring(names, raw.st_name, "name of symbol %d" % i), raw))
        return symbols

    def relocations(self, section):
        """The entries of a SHT_REL section, each with its Symbol."""
        if section.type != SHT_REL:
            raise ObjectError("section %r is not a SHT_REL relocation section" % section.name)
        if section.entsize != REL_SIZE or section.size % REL_SIZE:
            raise ObjectError("malformed ELF: relocation section %r has entries of %d bytes in %d (expected %d)" %
                             (section.name, section.entsize, section.size, REL_SIZE))
        symbols = self.symbols()
        if self.section_by_index(section.link, "relocation section %r" % section.name).type != SHT_SYMTAB:
            raise ObjectError("malformed ELF: relocation section %r does not use the symbol table" % section.name)
        data = self._bounded(section, "relocation section %r" % section.name)
        relocations = []
        for i in range(section.size // REL_SIZE):
            rel = self._unpack(_Rel, data, i * REL_SIZE, "relocation %d of %r" % (i, section.name))
            index = rel.r_info >> 32
            if index >= len(symbols):
                raise ObjectError("malformed ELF: relocation %d of %r refers to symbol %d of %d" %
                                 (i, section.name, index, len(symbols)))
            relocations.append(Relocation(rel.r_offset, rel.r_info & 0xffffffff, symbols[index]))
        return relocations


def _check_ident(data):
    """Check e_ident; return the struct byte order, "<" or ">"."""
    if data[:4] != ELFMAG:
        raise ObjectError("not an ELF object (no ELF magic number)")
    if len(data) < EHDR_SIZE:
        raise ObjectError("truncated object: %d bytes, shorter than an ELF header" % len(data))
    if data[EI_CLASS] != ELFCLASS64:
        raise ObjectError("not a BPF object: ELF class %d (expected ELFCLASS64, %d)" % (data[EI_CLASS], ELFCLASS64))
    if data[EI_VERSION] != EV_CURRENT:
        raise ObjectError("unsupported ELF version %d" % data[EI_VERSION])
    try:
        return {ELFDATA2LSB: "<", ELFDATA2MSB: ">"}[data[EI_DATA]]
    except KeyError:
        raise ObjectError("malformed ELF: unknown data encoding %d" % data[EI_DATA])

