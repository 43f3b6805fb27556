"""The libbpf engine: a ctypes binding to the system's libbpf (1.x, or 0.x from 0.3 on)."""
import ctypes
import errno

from probe import log
from probe.bpf import syscall
from probe.bpf.engine import Engine, raise_memlock_limit, verifier_error
from probe.bpf.objects import LoadedObject
from probe.errors import KernelError, ObjectError, ProbeError, permission_error

SONAMES = ("libbpf.so.1", "libbpf.so.0")
_MAX_ERRNO = 4095

_p = ctypes.c_void_p
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
}
# Iterators renamed in 1.0: (1.x name, 0.x name, 0.x takes (prev, obj) instead of (obj, prev)).
_ITERATORS = {
    "next_program": ("bpf_object__next_program", "bpf_program__next"),
    "next_map": ("bpf_object__next_map", "bpf_map__next"),
}
_OPTIONAL = {
    "libbpf_major_version": (ctypes.c_uint32, []),
    "libbpf_minor_version": (ctypes.c_uint32, []),
}


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


def _open_library(sonames):
    tried = []
    for soname in sonames:
        try:
            return ctypes.CDLL(soname, use_errno=True)
        except OSError as e:
            tried.append(str(e))
    raise ProbeError("libbpf not found (%s)" % "; ".join(tried),
                     hint="install it (apt-get install libbpf1, or dnf install libbpf)")


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

    def __init__(self, engine, obj, buffer):
        self._engine = engine
        self._obj = obj
        self._buffer = buffer  # libbpf may read it until the object is closed
        LoadedObject.__init__(self, engine.programs(obj), engine.maps(obj))

    def _release(self):
        if self._obj:
            self._engine.lib.bpf_object__close(self._obj)
            self._obj = None


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
        for name, (restype, argtypes) in _OPTIONAL.items():
            if hasattr(self.lib, name):
                _bind(self.lib, name, restype, argtypes)
        self._log = _Log()
        self.lib.libbpf_set_print(self._log.callback)

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
        return {self.lib.bpf_program__name(p).decode(): self.lib.bpf_program__fd(p)
                for p in self._iterate("next_program", obj)}

    def maps(self, obj):
        return {self.lib.bpf_map__name(m).decode(): self.lib.bpf_map__fd(m) for m in self._iterate("next_map", obj)}

    def load_bytes(self, data, reuse_maps=None, pin_root=None):
        raise_memlock_limit()
        buffer = ctypes.create_string_buffer(bytes(data), len(data))
        self._log.take()
        obj = self.lib.bpf_object__open_mem(buffer, len(data), None)
        err = self._pointer_error(obj)
        if err:
            raise self._error("libbpf cannot open the object", err, ObjectError)
        for name, fd in sorted((reuse_maps or {}).items()):
            found = self.lib.bpf_object__find_map_by_name(obj, name.encode())
            rc = self.lib.bpf_map__reuse_fd(found, fd) if found else -errno.ENOENT
            if rc < 0:
                self.lib.bpf_object__close(obj)
                raise self._error("libbpf cannot reuse map %s" % name, -rc)
        rc = self.lib.bpf_object__load(obj)
        if rc < 0:
            self.lib.bpf_object__close(obj)
            raise self._error("the kernel refused to load the program", -rc)
        self._log.take()
        return LibbpfObject(self, obj, buffer)

    def _error(self, what, err, kind=KernelError):
        text = self._log.take()
        # Checked first: the verifier's refusals come as EACCES too.
        refusal = verifier_error(verifier_log(text) or "", err, text)
        if refusal:
            return refusal
        message = "%s: %s" % (what, self._strerror(err))
        perm = permission_error(ProbeError(message, errno=err, log=text or None))
        if perm:
            return perm
        lines = [l for l in text.splitlines() if l.strip()]
        if lines:
            message += " (%s)" % lines[-1].strip().replace("libbpf: ", "")
        return kind(message, errno=err, log=text or None)
