"""BTF, the BPF Type Format (the kernel's Documentation/bpf/btf.rst): parse, walk, fix up for loading.

What libbpf does to an object's BTF before BPF_BTF_LOAD, and whether this module does it:

- DATASEC fix-up (done, fixup_datasecs): clang leaves every DATASEC's size and its VARs' offsets 0;
  libbpf fills them from the ELF section's size and each variable's symbol value, turns global VARs whose
  symbol is STV_HIDDEN or STV_INTERNAL into static ones, and sorts each DATASEC's VARs by offset. The
  extern sections .kconfig and .ksyms are left alone. Subprograms global in C but hidden get a static FUNC.
- Sanitizing for older kernels (not done; libbpf probes each feature, then rewrites a copy of the BTF):
  VAR -> INT (1 byte) and DATASEC -> STRUCT with '.' in its name replaced by '_' (no DATASEC before 5.2);
  FUNC_PROTO -> ENUM of 4 bytes and FUNC -> TYPEDEF (no FUNC before 4.20); global FUNC -> static FUNC
  (no BTF_FUNC_GLOBAL before 5.6); FLOAT -> anonymous empty STRUCT of the same size (5.13);
  DECL_TAG -> INT (5.16); TYPE_TAG -> CONST (5.17); ENUM64 -> UNION of 1-byte INT members, and the
  kind flag of ENUM cleared (6.0); a leading '?' of a DATASEC name -> '_'. A kernel without BTF at all
  (before 4.18) gets none: BTF is optional for an object like ours, and libbpf goes on without it when
  BPF_BTF_LOAD fails.
"""
import struct

from probe.bpf.elf import cstring
from probe.errors import ObjectError

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1

# enum btf_kind (include/uapi/linux/btf.h)
BTF_KIND_UNKN = 0
BTF_KIND_INT = 1
BTF_KIND_PTR = 2
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_ENUM = 6
BTF_KIND_FWD = 7
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_RESTRICT = 11
BTF_KIND_FUNC = 12
BTF_KIND_FUNC_PROTO = 13
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
BTF_KIND_FLOAT = 16
BTF_KIND_DECL_TAG = 17
BTF_KIND_TYPE_TAG = 18
BTF_KIND_ENUM64 = 19

KIND_NAMES = {
    BTF_KIND_UNKN: "UNKN", BTF_KIND_INT: "INT", BTF_KIND_PTR: "PTR", BTF_KIND_ARRAY: "ARRAY",
    BTF_KIND_STRUCT: "STRUCT", BTF_KIND_UNION: "UNION", BTF_KIND_ENUM: "ENUM", BTF_KIND_FWD: "FWD",
    BTF_KIND_TYPEDEF: "TYPEDEF", BTF_KIND_VOLATILE: "VOLATILE", BTF_KIND_CONST: "CONST",
    BTF_KIND_RESTRICT: "RESTRICT", BTF_KIND_FUNC: "FUNC", BTF_KIND_FUNC_PROTO: "FUNC_PROTO",
    BTF_KIND_VAR: "VAR", BTF_KIND_DATASEC: "DATASEC", BTF_KIND_FLOAT: "FLOAT", BTF_KIND_DECL_TAG: "DECL_TAG",
    BTF_KIND_TYPE_TAG: "TYPE_TAG", BTF_KIND_ENUM64: "ENUM64",
}

# VAR linkage (enum btf_var_linkage) and FUNC linkage (enum btf_func_linkage, in vlen)
BTF_VAR_STATIC = 0
BTF_VAR_GLOBAL_ALLOCATED = 1
BTF_VAR_GLOBAL_EXTERN = 2
BTF_FUNC_STATIC = 0
BTF_FUNC_GLOBAL = 1
BTF_FUNC_EXTERN = 2

# INT encoding bits
BTF_INT_SIGNED = 1 << 0
BTF_INT_CHAR = 1 << 1
BTF_INT_BOOL = 1 << 2

HEADER_SIZE = 24  # struct btf_header
TYPE_SIZE = 12  # struct btf_type
POINTER_SIZE = 8  # BPF pointers, whatever the host

# The kinds whose third word is a size; the others' is a type id (or, for FWD, nothing).
_SIZED = frozenset((BTF_KIND_INT, BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM, BTF_KIND_DATASEC,
                    BTF_KIND_FLOAT, BTF_KIND_ENUM64))
_REFERRING = frozenset((BTF_KIND_PTR, BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT,
                        BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_VAR, BTF_KIND_DECL_TAG,
                        BTF_KIND_TYPE_TAG))
# What libbpf's skip_mods_and_typedefs steps through.
_MODIFIERS = frozenset((BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT,
                        BTF_KIND_TYPE_TAG))
# Kinds that only name another type, so a chain of them must end somewhere (FUNC_PROTO and the
# aggregates end a chain: a struct may hold a pointer to itself).
_CHAINED = _MODIFIERS | frozenset((BTF_KIND_PTR, BTF_KIND_ARRAY, BTF_KIND_VAR, BTF_KIND_FUNC,
                                   BTF_KIND_DECL_TAG))
_EXTERN_DATASECS = (".kconfig", ".ksyms")

# Bytes that follow struct btf_type, per kind: a fixed part, or vlen entries of a size.
_FIXED_EXTRA = {BTF_KIND_INT: 4, BTF_KIND_ARRAY: 12, BTF_KIND_VAR: 4, BTF_KIND_DECL_TAG: 4}
_ENTRY_SIZE = {BTF_KIND_STRUCT: 12, BTF_KIND_UNION: 12, BTF_KIND_ENUM: 8, BTF_KIND_FUNC_PROTO: 8,
               BTF_KIND_DATASEC: 12, BTF_KIND_ENUM64: 12}


class Member(object):
    """A STRUCT or UNION member: bit_offset from the start, bitfield_size 0 unless a bitfield."""

    __slots__ = ("name", "type", "bit_offset", "bitfield_size")

    def __init__(self, name, type, bit_offset, bitfield_size):
        self.name, self.type, self.bit_offset, self.bitfield_size = name, type, bit_offset, bitfield_size


class Param(object):
    """A FUNC_PROTO parameter (type 0 and no name: the `...` of a variadic function)."""

    __slots__ = ("name", "type")

    def __init__(self, name, type):
        self.name, self.type = name, type


class EnumValue(object):
    """An ENUM or ENUM64 enumerator."""

    __slots__ = ("name", "value")

    def __init__(self, name, value):
        self.name, self.value = name, value


class VarSecinfo(object):
    """A DATASEC entry (struct btf_var_secinfo): a VAR's type id, offset and size in the section."""

    __slots__ = ("type", "offset", "size")

    def __init__(self, type, offset, size):
        self.type, self.offset, self.size = type, offset, size


class Array(object):
    """An ARRAY's element type, index type and number of elements (struct btf_array)."""

    __slots__ = ("type", "index_type", "nelems")

    def __init__(self, type, index_type, nelems):
        self.type, self.index_type, self.nelems = type, index_type, nelems


class Type(object):
    """One BTF type. `size` is set for sized kinds, `type` for kinds that name another type.

    Kind-specific parts: INT `encoding`, `bits_offset`, `nr_bits`; ARRAY `array`; STRUCT/UNION `members`;
    ENUM/ENUM64 `values`; FUNC_PROTO `params` (and `type`, the return type); DATASEC `vars`;
    VAR `linkage`; FUNC `linkage` (its vlen); DECL_TAG `component_idx`.
    """

    __slots__ = ("id", "kind", "name", "kind_flag", "vlen", "size", "type", "record_offset", "encoding",
                 "bits_offset", "nr_bits", "array", "members", "values", "params", "vars", "linkage",
                 "component_idx")

    def __init__(self, id, kind, name, kind_flag, vlen, size_or_type, record_offset):
        self.id = id
        self.kind = kind
        self.name = name
        self.kind_flag = kind_flag
        self.vlen = vlen
        self.size = size_or_type if kind in _SIZED else None
        self.type = size_or_type if kind in _REFERRING else None
        self.record_offset = record_offset  # of its struct btf_type in the type section
        self.encoding = self.bits_offset = self.nr_bits = None
        self.array = self.members = self.values = self.params = self.vars = None
        self.linkage = self.component_idx = None

    @property
    def kind_name(self):
        return KIND_NAMES.get(self.kind, str(self.kind))

    def __repr__(self):
        return "<BTF [%d] %s %r>" % (self.id, self.kind_name, self.name)

    def describe(self):
        """The type as messages name it: [3] TYPEDEF 'foo'."""
        if self.id == 0:
            return "[0] void"
        return "[%d] %s '%s'" % (self.id, self.kind_name, self.name)


class Btf(object):
    """A parsed BTF blob: its types (index = type id, 0 is void), strings, and the raw bytes."""

    def __init__(self, raw, byteorder, header, types, strings):
        self.raw = raw
        self.byteorder = byteorder  # "<" or ">"
        self.header = header  # (hdr_len, type_off, type_len, str_off, str_len)
        self.types = types
        self.strings = strings

    def type_by_id(self, type_id):
        """The Type with this id; id 0 is void."""
        if not 0 <= type_id < len(self.types):
            raise ObjectError("BTF type id %d out of range (%d types)" % (type_id, len(self.types) - 1))
        return self.types[type_id]

    def find(self, name, kind):
        """The first type of this kind and name, or None."""
        for t in self.types:
            if t.kind == kind and t.name == name:
                return t
        return None

    def skip_modifiers(self, type_id):
        """The type behind typedefs and qualifiers (const, volatile, restrict, type tags)."""
        t = self.type_by_id(type_id)
        seen = set()
        while t.kind in _MODIFIERS:
            if t.id in seen:
                raise ObjectError("BTF type loop at %s" % t.describe())
            seen.add(t.id)
            t = self.type_by_id(t.type)
        return t

    def size_of(self, type_id):
        """The size in bytes of a type, through typedefs, qualifiers, variables and arrays."""
        count = 1
        seen = set()
        t = self.type_by_id(type_id)
        while True:
            if t.id in seen:
                raise ObjectError("BTF type loop at %s" % t.describe())
            seen.add(t.id)
            if t.kind in _SIZED:
                size = t.size
                break
            if t.kind == BTF_KIND_PTR:
                size = POINTER_SIZE
                break
            if t.kind == BTF_KIND_ARRAY:
                count *= t.array.nelems
                t = self.type_by_id(t.array.type)
            elif t.kind in _MODIFIERS or t.kind in (BTF_KIND_VAR, BTF_KIND_DECL_TAG):
                t = self.type_by_id(t.type)
            else:
                raise ObjectError("BTF type %s has no size" % t.describe())
        total = size * count
        if total > 0xffffffff:
            raise ObjectError("BTF type [%d] is too large (%d bytes)" % (type_id, total))
        return total


def parse_btf(data):
    """Parse a BTF blob (the .BTF section); any damage raises ObjectError."""
    data = bytes(data)
    if len(data) < 4:
        raise ObjectError("truncated BTF: %d bytes" % len(data))
    if struct.unpack_from("<H", data)[0] == BTF_MAGIC:
        order = "<"
    elif struct.unpack_from(">H", data)[0] == BTF_MAGIC:
        order = ">"
    else:
        raise ObjectError("not BTF: magic 0x%02x%02x (expected 0x%04x)" % (data[0], data[1], BTF_MAGIC))
    if len(data) < HEADER_SIZE:
        raise ObjectError("truncated BTF: %d bytes, shorter than its header" % len(data))
    _, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(order + "HBBIIIII", data)
    if version != BTF_VERSION or flags:
        raise ObjectError("unsupported BTF: version %d, flags 0x%x" % (version, flags))
    if hdr_len < HEADER_SIZE or hdr_len > len(data):
        raise ObjectError("malformed BTF: header length %d (data has %d bytes)" % (hdr_len, len(data)))
    if any(data[HEADER_SIZE:hdr_len]):
        raise ObjectError("unsupported BTF: header extension of %d bytes is not zero" % (hdr_len - HEADER_SIZE))
    types_data = _section(data, hdr_len, type_off, type_len, "type")
    strings = _section(data, hdr_len, str_off, str_len, "string")
    if type_off % 4 or type_len % 4:
        raise ObjectError("malformed BTF: type section at %d, %d bytes, is not 4-byte aligned" % (type_off, type_len))
    if type_off < str_off + str_len and str_off < type_off + type_len:
        raise ObjectError("malformed BTF: type section (%d+%d) and string section (%d+%d) overlap" %
                         (type_off, type_len, str_off, str_len))
    if not strings or strings[0] != 0 or strings[-1] != 0:
        raise ObjectError("malformed BTF: the string section must start and end with a NUL byte")
    types = _parse_types(types_data, strings, order)
    btf = Btf(data, order, (hdr_len, type_off, type_len, str_off, str_len), types, strings)
    _check_references(btf)
    _check_chains(btf)
    return btf


BTF_EXT_HEADER_SIZE = 24  # struct btf_ext_header, up to line_info_len
BTF_EXT_CORE_HEADER_SIZE = 32  # with core_relo_off and core_relo_len
# The .BTF.ext blocks, in header order, with the size of their records (bpf_func_info, bpf_line_info,
# bpf_core_relo).
_EXT_BLOCKS = (("func_info", 8), ("line_info", 16), ("core_relo", 16))


def parse_ext_infos(data, btf):
    """The func_info, line_info and CO-RE relocation records of a .BTF.ext section:
    {"func_info", "line_info" or "core_relo": (record size, {code section name: [record bytes]})}."""
    data, order = bytes(data), btf.byteorder
    if len(data) < BTF_EXT_HEADER_SIZE:
        raise ObjectError("truncated .BTF.ext: %d bytes" % len(data))
    magic, version, flags, hdr_len = struct.unpack_from(order + "HBBI", data)
    if magic != BTF_MAGIC or version != BTF_VERSION or flags:
        raise ObjectError("unsupported .BTF.ext: magic 0x%04x, version %d, flags 0x%x" % (magic, version, flags))
    if hdr_len < BTF_EXT_HEADER_SIZE or hdr_len > len(data):
        raise ObjectError("malformed .BTF.ext: header length %d (data has %d bytes)" % (hdr_len, len(data)))
    blocks = len(_EXT_BLOCKS) if hdr_len >= BTF_EXT_CORE_HEADER_SIZE else 2  # older headers end at line_info
    offsets = struct.unpack_from(order + "II" * blocks, data, 8)
    infos = {"core_relo": (16, {})}
    for i, (what, min_size) in enumerate(_EXT_BLOCKS[:blocks]):
        offset, length = offsets[2 * i:2 * i + 2]
        infos[what] = _ext_info(_section(data, hdr_len, offset, length, what), btf, order, what, min_size)
    return infos


def core_access(btf, type_id, access, enum_value=False):
    """What a CO-RE relocation reaches, for messages: (its type as C names it, the member path).

    `access` is the relocation's access string ("0:1:2": an index into the root, then member or element
    indexes); for an enumerator relocation (enum_value), its one number is the enumerator's index.
    """
    root = btf.type_by_id(type_id)
    try:
        indexes = [int(part) for part in access.split(":")]
    except ValueError:
        raise ObjectError("malformed .BTF.ext: CO-RE access string '%s'" % access)
    what = "CO-RE access string '%s' of %s" % (access, root.describe())
    t = btf.skip_modifiers(type_id)
    if enum_value:
        if t.kind not in (BTF_KIND_ENUM, BTF_KIND_ENUM64) or len(indexes) != 1 or not 0 <= indexes[0] < len(t.values):
            raise ObjectError("malformed .BTF.ext: %s names no enumerator" % what)
        return c_name(root), t.values[indexes[0]].name
    path = ["[%d]" % indexes[0]] if indexes[0] else []
    for index in indexes[1:]:
        if t.kind in (BTF_KIND_STRUCT, BTF_KIND_UNION) and 0 <= index < len(t.members):
            member = t.members[index]
            if member.name:  # an anonymous struct or union adds no name
                path.append(member.name)
            t = btf.skip_modifiers(member.type)
        elif t.kind == BTF_KIND_ARRAY and index >= 0:
            path.append("[%d]" % index)
            t = btf.skip_modifiers(t.array.type)
        else:
            raise ObjectError("malformed .BTF.ext: %s goes past %s" % (what, t.describe()))
    return c_name(root), ".".join(path).replace(".[", "[")


def c_name(t):
    """A type as C source names it: "struct xdp_md", "int", "void"."""
    if t.id == 0:
        return "void"
    if t.kind in (BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM, BTF_KIND_ENUM64):
        return "%s %s" % ("enum" if t.kind == BTF_KIND_ENUM64 else t.kind_name.lower(), t.name or "(anon)")
    return t.name or t.describe()


def _ext_info(data, btf, order, what, min_size):
    """(record size, {section name: [records]}) of one .BTF.ext info block."""
    if not data:
        return min_size, {}
    if len(data) < 4:
        raise ObjectError("malformed .BTF.ext: %s of %d bytes" % (what, len(data)))
    rec_size = struct.unpack_from(order + "I", data)[0]
    if rec_size < min_size or rec_size % 4:
        raise ObjectError("malformed .BTF.ext: %s records of %d bytes" % (what, rec_size))
    sections, pos = {}, 4
    while pos < len(data):
        if pos + 8 > len(data):
            raise ObjectError("malformed .BTF.ext: %s cut short at byte %d" % (what, pos))
        name_off, count = struct.unpack_from(order + "II", data, pos)
        pos += 8
        if pos + count * rec_size > len(data):
            raise ObjectError("malformed .BTF.ext: %s holds %d records past its end" % (what, count))
        name = _name(btf.strings, name_off, what + " section")
        sections.setdefault(name, []).extend(data[pos + i * rec_size:pos + (i + 1) * rec_size] for i in range(count))
        pos += count * rec_size
    return rec_size, sections


def _section(data, hdr_len, offset, length, what):
    start = hdr_len + offset
    if start + length > len(data):
        raise ObjectError("malformed BTF: %s section (offset %d, %d bytes) runs past the end of the data "
                         "(%d bytes)" % (what, offset, length, len(data)))
    return data[start:start + length]


def _name(strings, offset, what):
    return cstring(strings, offset, "malformed BTF: name of " + what)


def _parse_types(data, strings, order):
    header = struct.Struct(order + "III")
    word = struct.Struct(order + "I")
    pair = struct.Struct(order + "II")
    signed_pair = struct.Struct(order + "Ii")
    triple = struct.Struct(order + "III")
    types = [Type(0, BTF_KIND_UNKN, "", False, 0, 0, None)]  # void
    pos = 0
    while pos < len(data):
        type_id = len(types)
        if pos + TYPE_SIZE > len(data):
            raise ObjectError("malformed BTF: type [%d] at offset %d runs past the type section" % (type_id, pos))
        name_off, info, size_or_type = header.unpack_from(data, pos)
        kind = (info >> 24) & 0x1f
        vlen = info & 0xffff
        if kind not in KIND_NAMES or kind == BTF_KIND_UNKN:
            raise ObjectError("malformed BTF: type [%d] has unknown kind %d" % (type_id, kind))
        t = Type(type_id, kind, _name(strings, name_off, "type [%d]" % type_id), bool(info >> 31), vlen,
                 size_or_type, pos)
        extra = _FIXED_EXTRA.get(kind, 0) + _ENTRY_SIZE.get(kind, 0) * vlen
        start, end = pos + TYPE_SIZE, pos + TYPE_SIZE + extra
        if end > len(data):
            raise ObjectError("malformed BTF: %s (%d bytes) runs past the type section" % (t.describe(), end - pos))
        what = "a member of " + t.describe()
        if kind == BTF_KIND_INT:
            bits = word.unpack_from(data, start)[0]
            t.encoding, t.bits_offset, t.nr_bits = (bits >> 24) & 0xf, (bits >> 16) & 0xff, bits & 0xff
        elif kind == BTF_KIND_ARRAY:
            t.array = Array(*triple.unpack_from(data, start))
        elif kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            t.members = []
            for i in range(vlen):
                name, member_type, offset = triple.unpack_from(data, start + 12 * i)
                if t.kind_flag:  # bitfield size in the top 8 bits
                    t.members.append(Member(_name(strings, name, what), member_type, offset & 0xffffff, offset >> 24))
                else:
                    t.members.append(Member(_name(strings, name, what), member_type, offset, 0))
        elif kind == BTF_KIND_ENUM:
            t.values = [EnumValue(_name(strings, name, what), value)
                        for name, value in (signed_pair.unpack_from(data, start + 8 * i) for i in range(vlen))]
        elif kind == BTF_KIND_ENUM64:
            t.values = []
            for i in range(vlen):
                name, lo, hi = triple.unpack_from(data, start + 12 * i)
                value = hi << 32 | lo
                if t.kind_flag and value >> 63:  # kind_flag: signed
                    value -= 1 << 64
                t.values.append(EnumValue(_name(strings, name, what), value))
        elif kind == BTF_KIND_FUNC_PROTO:
            t.params = [Param(_name(strings, name, what), param_type)
                        for name, param_type in (pair.unpack_from(data, start + 8 * i) for i in range(vlen))]
        elif kind == BTF_KIND_VAR:
            t.linkage = word.unpack_from(data, start)[0]
        elif kind == BTF_KIND_DATASEC:
            t.vars = [VarSecinfo(*triple.unpack_from(data, start + 12 * i)) for i in range(vlen)]
        elif kind == BTF_KIND_FUNC:
            t.linkage = vlen
        elif kind == BTF_KIND_DECL_TAG:
            t.component_idx = struct.unpack_from(order + "i", data, start)[0]
        types.append(t)
        pos = end
    return types


def _referenced(t):
    """Type ids a type names."""
    ids = []
    if t.type is not None:
        ids.append(t.type)
    if t.array is not None:
        ids += [t.array.type, t.array.index_type]
    ids += [m.type for m in t.members or ()]
    ids += [p.type for p in t.params or ()]
    ids += [v.type for v in t.vars or ()]
    return ids


def _check_references(btf):
    for t in btf.types:
        for ref in _referenced(t):
            if ref >= len(btf.types):
                raise ObjectError("malformed BTF: %s refers to type [%d], past the last type [%d]" %
                                 (t.describe(), ref, len(btf.types) - 1))


def _check_chains(btf):
    """Every chain of typedefs, qualifiers, pointers and arrays must end: a cycle is a type loop."""
    ends = set()  # ids known to reach a type that is not chained
    for start in btf.types:
        path = []
        on_path = set()
        t = start
        while t.kind in _CHAINED and t.id not in ends:
            if t.id in on_path:
                loop = path[path.index(t):] + [t]
                raise ObjectError("BTF type loop: %s" % " -> ".join(x.describe() for x in loop))
            path.append(t)
            on_path.add(t.id)
            t = btf.types[t.array.type if t.kind == BTF_KIND_ARRAY else t.type]
        ends.update(on_path)


def fixup_datasecs(btf, section_sizes, symbol_values, hidden=frozenset(), static_functions=frozenset()):
    """The BTF blob as libbpf passes it to BPF_BTF_LOAD: DATASEC sizes and VAR offsets filled in.

    section_sizes: {ELF section name: size}; symbol_values: {name: value} of the global symbols;
    hidden: names of those whose visibility is STV_HIDDEN or STV_INTERNAL; static_functions: subprograms
    global in C but hidden, whose FUNC libbpf makes static (the verifier then checks them with their
    caller's context). Returns bytes in the blob's own byte order.
    """
    out = bytearray(btf.raw)
    base = btf.header[0] + btf.header[1]  # hdr_len + type_off
    word = struct.Struct(btf.byteorder + "I")
    triple = struct.Struct(btf.byteorder + "III")
    for name in static_functions:
        for func in btf.types:
            if func.kind == BTF_KIND_FUNC and func.linkage == BTF_FUNC_GLOBAL and func.name == name:
                word.pack_into(out, base + func.record_offset + 4, BTF_KIND_FUNC << 24 | BTF_FUNC_STATIC)
                break
    for sec in btf.types:
        if sec.kind != BTF_KIND_DATASEC or sec.name in _EXTERN_DATASECS:
            continue
        record = base + sec.record_offset
        # A size already set means a linker (bpftool gen object) has done this.
        fixup_offsets = sec.size == 0
        if fixup_offsets:
            size = section_sizes.get(sec.name)
            if not size or size > 0xffffffff:
                raise ObjectError("BTF DATASEC '%s': no ELF section of a usable size (%s)" % (sec.name, size))
            word.pack_into(out, record + 8, size)
        entries = []
        for info in sec.vars:
            var = btf.type_by_id(info.type)
            if var.kind != BTF_KIND_VAR:
                raise ObjectError("BTF DATASEC '%s' holds %s, not a VAR" % (sec.name, var.describe()))
            offset = info.offset
            if var.linkage not in (BTF_VAR_STATIC, BTF_VAR_GLOBAL_EXTERN):
                if var.name not in symbol_values:
                    raise ObjectError("BTF DATASEC '%s': no ELF symbol for variable '%s'" % (sec.name, var.name))
                value = symbol_values[var.name]
                if fixup_offsets:
                    if value + info.size > size:
                        raise ObjectError("BTF DATASEC '%s': variable '%s' at %d (%d bytes) is outside its "
                                         "section" % (sec.name, var.name, value, info.size))
                    offset = value
                if var.name in hidden:  # global in C, but not outside the object: static, as libbpf says
                    word.pack_into(out, base + var.record_offset + TYPE_SIZE, BTF_VAR_STATIC)
            entries.append((offset, info.type, info.size))
        # libbpf sorts the variables by offset; a stable sort keeps equal offsets in their order.
        entries.sort(key=lambda entry: entry[0])
        for i, (offset, var_type, var_size) in enumerate(entries):
            triple.pack_into(out, record + TYPE_SIZE + 12 * i, var_type, offset, var_size)
    return bytes(out)
