"""The libbpf engine: a ctypes binding to the system's libbpf (1.x, or 0.x from 0.3 on)."""
import ctypes
import errno
import os
import re

from probe.bpf import log
from probe.bpf import syscall
from probe.bpf.engine import Engine, raise_memlock_limit, verifier_error
from probe.bpf.objects import LoadedObject
from probe.errors import KernelError, ObjectError, ProbeError, permission_error

SONAMES = ("libbpf.so.1", "libbpf.so.0")
_MAX_ERRNO = 4095

_p = ctypes.c_void_p
_u32 = ctypes.c_uint32
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
# name: (restype, argtypes); every function the engine calls.
_FUNCTIONS = {
    "libbpf_set_print": (_p, [_PRINT_FN]),
    "libbpf_strerror": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]),
    "bpf_object__open_mem": (_p, [_p, ctypes.c_size_t, _p]),
    "bpf_object__load": (ctypes.c_int, [_p]),
    "bpf_object__close": (None, [_p]),
    "bpf_program__name": (ctypes.c_char_p, [_p]),
    "bpf_program__fd": (ctypes.c_int, [_p]),
    "bpf_map__name": (ctypes.c_char_p, [_p]),
    "bpf_map__fd": (ctypes.c_int, [_p]),
    "bpf_object__find_map_by_name": (_p, [_p, ctypes.c_char_p]),
    "bpf_map__reuse_fd": (ctypes.c_int, [_p, ctypes.c_int]),
    "bpf_map__is_pinned": (ctypes.c_bool, [_p]),
    "bpf_map__type": (_u32, [_p]),
    "bpf_map__key_size": (_u32, [_p]),
    "bpf_map__value_size": (_u32, [_p]),
    "bpf_map__max_entries": (_u32, [_p]),
    "bpf_map__map_flags": (_u32, [_p]),
    "bpf_program__set_autoload": (ctypes.c_int, [_p, ctypes.c_bool]),
}
# bpf_map__get_pin_path became bpf_map__pin_path in 0.5, the old name staying as an alias: the new one first.
_PIN_PATH = ("bpf_map__pin_path", "bpf_map__get_pin_path")
# Iterators renamed in 1.0: (1.x name, 0.x name, 0.x takes (prev, obj) instead of (obj, prev)).
_ITERATORS = {
    "next_program": ("bpf_object__next_program", "bpf_program__next"),
    "next_map": ("bpf_object__next_map", "bpf_map__next"),
}
_OPTIONAL = {
    "libbpf_major_version": (_u32, []),
    "libbpf_minor_version": (_u32, []),
}
# A map's capacity set before load: bpf_map__set_max_entries (0.5+), or bpf_map__resize (0.x, gone in 1.0).
_SET_MAX_ENTRIES = ("bpf_map__set_max_entries", "bpf_map__resize")


# What a map in the kernel must share with a declaration to stand in for it, as libbpf judges a pinned map:
# (struct bpf_map_info field, the libbpf call that reads the declaration).
_FITS = (("type", "bpf_map__type"), ("key_size", "bpf_map__key_size"), ("value_size", "bpf_map__value_size"),
         ("max_entries", "bpf_map__max_entries"), ("map_flags", "bpf_map__map_flags"))


class ObjectOpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts up to pin_root_path, which 0.x and 1.x place alike.

    sz is the size of this prefix: every libbpf reads the fields that end within sz and takes any sz up to
    its own struct's.
    """
    _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p), ("relaxed_maps", ctypes.c_bool),
                ("relaxed_core_relocs", ctypes.c_bool),  # 0.x; padding since 1.0 removed it
                ("pin_root_path", ctypes.c_char_p)]


def _bind(lib, name, restype, argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_vasprintf = _bind(syscall.libc, "vasprintf", ctypes.c_int,
                   [ctypes.POINTER(ctypes.c_char_p), ctypes.c_char_p, _p])
_free = _bind(syscall.libc, "free", None, [_p])


class _Log(object):
    """Collects libbpf's messages for the call in progress, and logs them at debug level.

    The verifier's log is only collected: a refusal carries it in its ProbeError, shown once under -v.
    """

    def __init__(self):
        self.lines = []
        self.callback = _PRINT_FN(self._print)  # kept referenced: libbpf calls it for the process's life

    def _print(self, level, fmt, args):
        out = ctypes.c_char_p()
        # va_list is passed on untouched; libc formats it.
        if _vasprintf(ctypes.byref(out), fmt, args) < 0:
            return 0
        try:
            text = out.value.decode("utf-8", "replace")
        finally:
            _free(ctypes.cast(out, _p))
        self.lines.append(text)
        if verifier_log(text) is None:
            for line in text.rstrip("\n").splitlines():
                log.debug("%s", line)
        return 0

    def take(self):
        text, self.lines = "".join(self.lines), []
        return text


_LOG = _Log()  # one for the process: libbpf has one print callback, whichever engine set it last


def _open_library(sonames):
    tried = []
    for soname in sonames:
        try:
            return ctypes.CDLL(soname, use_errno=True)
        except OSError as e:
            tried.append(str(e))
    raise ProbeError("libbpf not found (%s)" % "; ".join(tried),
                     hint="install it (apt-get install libbpf1, or dnf install libbpf)", doctor=True)


# How libbpf frames the verifier's log: 1.x, and 0.x (which returns -LIBBPF_ERRNO__VERIFY, not EACCES).
_VERIFIER_LOG_MARKS = (("-- BEGIN PROG LOAD LOG --", "-- END PROG LOAD LOG --"),
                       ("-- BEGIN DUMP LOG ---", "-- END LOG --"))


def verifier_log(text):
    """The verifier's log inside libbpf's messages, or None."""
    for begin, end in _VERIFIER_LOG_MARKS:
        if begin in text:
            return text.split(begin)[-1].split(end)[0]
    return None


class LibbpfObject(LoadedObject):
    """A bpf_object opened and loaded by libbpf."""

    def __init__(self, engine, obj, buffer, maps, pins):
        self._engine = engine
        self._obj = obj
        self._buffer = buffer  # libbpf may read it until the object is closed
        LoadedObject.__init__(self, engine.programs(obj), maps, pins)

    def _release(self):
        if self._obj:
            self._engine.lib.bpf_object__close(self._obj)
            self._obj = None


# libbpf's words, in 0.3 and 1.x, for the step of bpf_object__load that failed. Externs are listed at open.
_EXTERN = re.compile(r"extern \((kcfg|ksym)\) #\d+: .*name (\S+)$", re.M)
_KSYM_FAILED = re.compile(r"extern \((?:var |func )?ksym\) '([^']+)': ((?:not found|failed to find|incompatible).*)$",
                          re.M)
_NOT_RESOLVED = re.compile(r"extern '?([^' ]+)'? \(strong\):? not resolved")
# What libbpf resolves externs from, needed whether they are weak or not: (its words when it cannot read it,
# the kind of extern and the name prefix of those that need it, what it is, what to do).
_SOURCES = (("failed to open system Kconfig", "kcfg", "CONFIG_",
             "this kernel's config (/boot/config-%s, /proc/config.gz)" % os.uname().release,
             "provide /boot/config-%s, or run a kernel with CONFIG_IKCONFIG_PROC" % os.uname().release),
            ("Error loading vmlinux BTF", "ksym", "", "this kernel's BTF (/sys/kernel/btf/vmlinux)",
             "use a libbpf as recent as the kernel, on a kernel with CONFIG_DEBUG_INFO_BTF"))
_MAP_FAILED = re.compile(r"map '([^']+)': failed to create: ")  # ends every map failure, pins' included
_PIN_MISMATCH = "couldn't reuse pinned map at"
_PIN_UNREADABLE = re.compile(r"couldn't retrieve pinned map '[^']+': (.*)$", re.M)
_PIN_FAILED = "failed to auto-pin at"
_PROGRAM_FAILED = re.compile(r"prog '([^']+)': failed to load:|failed to load program '([^']+)'")
_ATTRIBUTES = {"kcfg": "__kconfig", "ksym": "__ksym"}
_WEAK = "declare it __weak to load without it"
_VERBOSE = "run with -v for libbpf's log"


def _extern_error(text, err):
    """The ObjectError naming the extern libbpf could not resolve, or None."""
    kinds = {name: kind for kind, name in _EXTERN.findall(text)}
    found = _KSYM_FAILED.search(text)
    if found:
        return ObjectError("the object's extern %s (__ksym) cannot be resolved: %s"
                           % (found.group(1), found.group(2).rstrip(".")), hint=_WEAK, errno=err, log=text)
    found = _NOT_RESOLVED.search(text)
    if found:
        name = found.group(1)
        kind = kinds.get(name)
        return ObjectError("the object's extern %s%s is not in this kernel%s"
                           % (name, " (%s)" % _ATTRIBUTES[kind] if kind else "", "'s config" if kind == "kcfg" else ""),
                           hint=_WEAK, errno=err, log=text)
    for words, kind, prefix, source, hint in _SOURCES:
        if words in text:
            names = sorted(name for name, k in kinds.items() if k == kind and name.startswith(prefix))
            return ObjectError("libbpf cannot read %s%s" % (source, " for the object's %s externs %s"
                                                            % (_ATTRIBUTES[kind], ", ".join(names)) if names else ""),
                               hint=hint, errno=err, log=text)
    return None


class LibbpfEngine(Engine):
    """Loads objects through libbpf.so, found by its soname."""

    name = "libbpf"

    def __init__(self, sonames=SONAMES):
        self.lib = _open_library(sonames)
        for name, (restype, argtypes) in _FUNCTIONS.items():
            _bind(self.lib, name, restype, argtypes)
        self._iterators = {}
        for key, (new, old) in _ITERATORS.items():
            if hasattr(self.lib, new):
                self._iterators[key] = (_bind(self.lib, new, _p, [_p, _p]), False)
            else:
                self._iterators[key] = (_bind(self.lib, old, _p, [_p, _p]), True)
        self._pin_path = _bind(self.lib, next(n for n in _PIN_PATH if hasattr(self.lib, n)), ctypes.c_char_p, [_p])
        self._set_max_entries = _bind(self.lib, next(n for n in _SET_MAX_ENTRIES if hasattr(self.lib, n)),
                                      ctypes.c_int, [_p, _u32])
        for name, (restype, argtypes) in _OPTIONAL.items():
            if hasattr(self.lib, name):
                _bind(self.lib, name, restype, argtypes)
        self._log = _LOG
        self.lib.libbpf_set_print(_LOG.callback)

    @property
    def version(self):
        """libbpf's version, "1.1"; 0.x has no call that says, so "0.x"."""
        if hasattr(self.lib, "libbpf_major_version"):
            return "%d.%d" % (self.lib.libbpf_major_version(), self.lib.libbpf_minor_version())
        return "0.x"

    def _strerror(self, err):
        buf = ctypes.create_string_buffer(256)
        self.lib.libbpf_strerror(err, buf, len(buf))
        return buf.value.decode("utf-8", "replace") or errno.errorcode.get(err, str(err))

    def _pointer_error(self, ptr):
        """The errno behind a failed pointer return: 1.x gives NULL and errno, 0.x an encoded -errno."""
        if not ptr:
            return ctypes.get_errno() or errno.EINVAL
        if ptr >= (1 << (8 * ctypes.sizeof(_p))) - _MAX_ERRNO:
            return (1 << (8 * ctypes.sizeof(_p))) - ptr
        return 0

    def _iterate(self, key, obj):
        fn, prev_first = self._iterators[key]
        item = None
        while True:
            item = fn(item, obj) if prev_first else fn(obj, item)
            if not item:
                return
            yield item

    def programs(self, obj):
        fds = {self.lib.bpf_program__name(p).decode(): self.lib.bpf_program__fd(p)
               for p in self._iterate("next_program", obj)}
        return {name: fd for name, fd in fds.items() if fd >= 0}  # those not loaded have none

    def map_names(self, obj):
        """The names of the object's maps as declared, in libbpf's order; read before the load, since reusing a
        map renames it after the kernel's (at most 15 characters)."""
        return [self.lib.bpf_map__name(m).decode() for m in self._iterate("next_map", obj)]

    def map_fds(self, obj, names):
        """{name: fd} of the maps of a loaded object, named as map_names() read them."""
        return dict(zip(names, (self.lib.bpf_map__fd(m) for m in self._iterate("next_map", obj))))

    def _pin_paths(self, obj):
        """(map, path) of each map libbpf pins on load: those declared with pinning by name."""
        for m in self._iterate("next_map", obj):
            path = self._pin_path(m)
            if path:
                yield m, os.fsdecode(path)

    def _open(self, buffer, pin_root=None):
        """A bpf_object opened (parsed, nothing loaded) from a buffer; ObjectError with libbpf's reason."""
        opts = ObjectOpenOpts(sz=ctypes.sizeof(ObjectOpenOpts),
                              pin_root_path=os.fsencode(pin_root) if pin_root else None)
        self._log.take()
        obj = self.lib.bpf_object__open_mem(buffer, len(buffer), ctypes.byref(opts))
        err = self._pointer_error(obj)
        if err:
            raise self._error("libbpf cannot open the object", err, ObjectError)
        return obj

    def check_opens(self, data):
        """Open an object and close it again, loading nothing: the ObjectError libbpf's reader gives, if any."""
        self.lib.bpf_object__close(self._open(ctypes.create_string_buffer(bytes(data), len(data))))
        self._log.take()

    def load_bytes(self, data, reuse_maps=None, pin_root=None, max_entries=None, programs=None):
        raise_memlock_limit()
        buffer = ctypes.create_string_buffer(bytes(data), len(data))
        obj = self._open(buffer, pin_root)
        try:
            if programs is not None:
                for p in self._iterate("next_program", obj):
                    if self.lib.bpf_program__name(p).decode() not in programs:
                        self.lib.bpf_program__set_autoload(p, False)
            names = self.map_names(obj)
            for name, entries in sorted((max_entries or {}).items()):
                self._resize(obj, name, entries)
            for name, fd in sorted((reuse_maps or {}).items()):
                self._reuse(obj, name, fd)
            # A pin found in place is reused, not made: it is not this load's to remove.
            existing = {path for _, path in self._pin_paths(obj) if os.path.exists(path)}
            rc = self.lib.bpf_object__load(obj)
            if rc < 0:  # libbpf has removed the pins it made
                raise self._error("libbpf cannot load the object", -rc, obj=obj)
            pins = [path for m, path in self._pin_paths(obj)
                    if self.lib.bpf_map__is_pinned(m) and path not in existing]
            self._log.take()
            return LibbpfObject(self, obj, buffer, self.map_fds(obj, names), pins)
        except BaseException:
            self.lib.bpf_object__close(obj)
            raise

    def _resize(self, obj, name, entries):
        """Give the object's map `name`, if it declares one, another capacity, before load."""
        found = self.lib.bpf_object__find_map_by_name(obj, name.encode())
        if not found:
            return
        rc = self._set_max_entries(found, entries)
        if rc < 0:
            raise self._error("libbpf cannot size map %s to %d entries" % (name, entries), -rc)

    def _reuse(self, obj, name, fd):
        """Have the object's map `name` be the caller's map fd, which must fit its declaration."""
        found = self.lib.bpf_object__find_map_by_name(obj, name.encode())
        if not found:
            raise ObjectError("cannot reuse map %s: the object declares no such map" % name)
        try:
            differences = self._differences(found, fd)
        except KernelError as e:
            raise e.wrap("cannot reuse map %s (fd %d)" % (name, fd)) from e
        if differences:
            raise ObjectError("cannot reuse map %s: the map given has %s" % (name, differences),
                              hint="the object must declare the map as the one in the kernel")
        rc = self.lib.bpf_map__reuse_fd(found, fd)
        if rc < 0:
            raise self._error("libbpf cannot reuse map %s" % name, -rc)

    def _differences(self, declared, fd):
        """How the kernel's map behind fd differs from a map's declaration ("max_entries 4 where the object
        declares 8"); empty if it fits."""
        info = syscall.map_info(fd)
        out = []
        for field, getter in _FITS:
            want = getattr(self.lib, getter)(declared)
            if getattr(info, field) != want:
                out.append("%s %d where the object declares %d" % (field, getattr(info, field), want))
        return ", ".join(out)

    def _map_error(self, obj, text, err):
        """The error naming the map libbpf could not create, pin or take from its pin, or None."""
        found = _MAP_FAILED.search(text)
        if not found:
            return None
        name = found.group(1)
        declared = self.lib.bpf_object__find_map_by_name(obj, name.encode())
        path = os.fsdecode(self._pin_path(declared) or b"") if declared else ""
        if _PIN_MISMATCH in text:
            differences = self._pinned_differences(declared, path)
            return ObjectError("map %s pinned at %s %s" % (name, path, "has " + differences if differences else
                                                           "does not fit the object's declaration"),
                               hint="remove the pin (rm %s) if its contents can go, or pin elsewhere" % path,
                               errno=err, log=text)
        unreadable = _PIN_UNREADABLE.search(text)
        if unreadable:
            return KernelError("map %s: cannot open the pin at %s: %s" % (name, path, unreadable.group(1)),
                               errno=err, log=text)
        if _PIN_FAILED in text:
            return KernelError("cannot pin map %s at %s: %s" % (name, path, self._strerror(err)),
                               hint="pin under a folder on a bpffs (mount -t bpf bpf DIR)", errno=err, log=text)
        return KernelError("the kernel refused to create map %s: %s" % (name, self._strerror(err)), hint=_VERBOSE,
                           errno=err, log=text)

    def _pinned_differences(self, declared, path):
        """How the map pinned at path differs from the declaration; "" where that cannot be told."""
        try:
            fd = syscall.obj_get(path)
        except KernelError:
            return ""  # gone since libbpf looked
        try:
            return self._differences(declared, fd)
        finally:
            os.close(fd)

    def _program_error(self, text, err):
        """The KernelError naming the program the kernel refused without a verifier's reason, or None."""
        found = _PROGRAM_FAILED.search(text)
        if not found:
            return None
        return KernelError("the kernel refused to load program %s: %s" % (found.group(1) or found.group(2),
                                                                          self._strerror(err)),
                           hint=_VERBOSE, errno=err, log=text)

    def _error(self, what, err, kind=KernelError, obj=None):
        """The error for a failed libbpf call, told from libbpf's messages since the last one: the verifier's
        refusal, else the step of loading `obj` that failed, else `what` with libbpf's last line."""
        text = self._log.take()
        # Checked first: the verifier's refusals come as EACCES too.
        refusal = verifier_error(verifier_log(text) or "", err, text)
        if refusal:
            return refusal
        step = None
        if obj:
            step = _extern_error(text, err) or self._map_error(obj, text, err) or self._program_error(text, err)
        if step:
            return permission_error(step) or step
        message = "%s: %s" % (what, self._strerror(err))
        perm = permission_error(ProbeError(message, errno=err, log=text or None))
        if perm:
            return perm
        lines = [l for l in text.splitlines() if l.strip()]
        if lines:
            message += " (%s)" % lines[-1].strip().replace("libbpf: ", "")
        return kind(message, errno=err, log=text or None)
