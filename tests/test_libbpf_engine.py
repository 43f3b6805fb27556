"""The libbpf engine in the kernel: maps pinned under the pin root given, the pins a load made removed at close
unless kept, pins found in place reused and left, and the step that failed (open, map, pin, extern, verifier)
said in one line, with no fd left behind."""
import contextlib
import ctypes
import os
import subprocess

import pytest

from conftest import bpf_source, compile_bpf
from probe.bpf import syscall
from probe.bpf.constants import BPF_MAP_TYPE_ARRAY
from probe.bpf.libbpf import LibbpfEngine, ObjectOpenOpts, _extern_error
from probe.errors import KernelError, ObjectError, VerifierError

PINNED = "pinned_counts"  # pinned_map.bpf.c's map declared with pinning by name
KEY = (0).to_bytes(4, "little")


@pytest.fixture(scope="module")
def engine():
    return LibbpfEngine()


@pytest.fixture
def pin_root(bpffs):
    """An empty folder on the test's own bpffs (whose top folder holds the kernel's maps.debug and progs.debug):
    nothing is ever pinned under /sys/fs/bpf."""
    path = os.path.join(bpffs, "pins")
    os.mkdir(path)
    return path


def compiled(folder, name, defines=""):
    """The bytes of a tests/bpf/ source compiled, with #define lines put before it."""
    return compile_bpf(folder, defines + bpf_source(name)).read_bytes()


def open_fds():
    return sorted(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def no_fd_left():
    """Fails if the block leaves another set of fds open than it found."""
    before = open_fds()
    yield
    assert open_fds() == before


def one_line(e):
    """The error's text, checked to be one line."""
    text = str(e.value)
    assert "\n" not in text, text
    return text


# The options struct

def test_open_opts_place_pin_root_path_as_the_installed_header_does(tmp_path):
    """libbpf-dev's own header agrees on where pin_root_path is, and on sz covering it."""
    source = tmp_path / "opts.c"
    source.write_text('#include <stddef.h>\n#include <stdio.h>\n#include <bpf/libbpf.h>\n'
                      'int main(void) { printf("%zu %zu", offsetof(struct bpf_object_open_opts, pin_root_path),\n'
                      '    offsetof(struct bpf_object_open_opts, pin_root_path) + sizeof(const char *)); }\n')
    subprocess.run(["cc", str(source), "-o", str(tmp_path / "opts")], check=True)
    offset, end = subprocess.run([str(tmp_path / "opts")], stdout=subprocess.PIPE, check=True).stdout.split()
    assert (ObjectOpenOpts.pin_root_path.offset, ctypes.sizeof(ObjectOpenOpts)) == (int(offset), int(end))


# Pins

@pytest.mark.integration
def test_pins_land_under_the_pin_root_and_go_at_close(engine, pin_root, tmp_path):
    root = os.path.join(pin_root, "probe")  # libbpf makes the folder
    obj = engine.load_bytes(compiled(tmp_path, "pinned_map.bpf.c"), pin_root=root)
    try:
        path = os.path.join(root, PINNED)
        assert obj.pins == [path]  # `plain`, declared without pinning, is not pinned
        assert os.listdir(root) == [PINNED]
        fd = syscall.obj_get(path)
        try:
            assert syscall.map_info(fd).id == obj.map(PINNED).id
        finally:
            os.close(fd)
    finally:
        obj.close()
    assert os.listdir(root) == []


@pytest.mark.integration
def test_kept_pins_stay_and_the_next_load_takes_the_map_over(engine, pin_root, tmp_path):
    data = compiled(tmp_path, "pinned_map.bpf.c")
    first = engine.load_bytes(data, pin_root=pin_root)
    first.map(PINNED).update(KEY, (7).to_bytes(8, "little"))
    map_id = first.map(PINNED).id
    first.keep_pins = True
    first.close()
    assert os.listdir(pin_root) == [PINNED]

    second = engine.load_bytes(data, pin_root=pin_root)
    try:
        assert second.pins == []  # reused, not made: not this load's to remove
        assert second.map(PINNED).id == map_id
        assert second.map(PINNED).lookup(KEY) == (7).to_bytes(8, "little")
    finally:
        second.close()
    assert os.listdir(pin_root) == [PINNED]


@pytest.mark.integration
def test_a_pin_found_in_place_is_reused_and_left(engine, pin_root, tmp_path):
    """A map someone else pinned, declared alike: the load uses it, and close() leaves the pin. (The map has no
    name: libbpf renames the map it reuses after the kernel's, the object keeps the declared name.)"""
    path = os.path.join(pin_root, PINNED)
    fd = syscall.map_create(syscall.MapCreateAttr(map_type=BPF_MAP_TYPE_ARRAY, key_size=4, value_size=8,
                                                  max_entries=4))
    try:
        syscall.obj_pin(fd, path)
        with engine.load_bytes(compiled(tmp_path, "pinned_map.bpf.c"), pin_root=pin_root) as obj:
            assert obj.pins == []
            assert obj.map(PINNED).id == syscall.map_info(fd).id
        assert os.path.exists(path)
    finally:
        os.close(fd)


@pytest.mark.integration
def test_a_pinned_map_declared_otherwise_is_named(engine, pin_root, tmp_path):
    """The pin libbpf cannot reuse: one line naming the map, its pin and what differs; the pin stays."""
    other = engine.load_bytes(compiled(tmp_path, "pinned_map.bpf.c", "#define PINNED_MAX_ENTRIES 8\n"),
                              pin_root=pin_root)
    other.keep_pins = True
    other.close()
    path = os.path.join(pin_root, PINNED)
    with no_fd_left(), pytest.raises(ObjectError) as e:
        engine.load_bytes(compiled(tmp_path, "pinned_map.bpf.c"), pin_root=pin_root)
    assert one_line(e) == ("map pinned_counts pinned at %s has max_entries 8 where the object declares 4; "
                           "remove the pin (rm %s) if its contents can go, or pin elsewhere" % (path, path))
    assert "couldn't reuse pinned map" in e.value.log
    assert os.listdir(pin_root) == [PINNED]


@pytest.mark.integration
def test_a_pin_root_off_a_bpffs_is_named(engine, tmp_path):
    with no_fd_left(), pytest.raises(KernelError) as e:
        engine.load_bytes(compiled(tmp_path, "pinned_map.bpf.c"), pin_root=str(tmp_path / "pins"))
    assert one_line(e).startswith("cannot pin map pinned_counts at %s: " % (tmp_path / "pins" / PINNED))
    assert e.value.hint == "pin under a folder on a bpffs (mount -t bpf bpf DIR)"


@pytest.mark.integration
def test_a_load_the_verifier_refuses_keeps_its_log_and_leaves_no_pin(engine, pin_root, tmp_path):
    """libbpf pins maps before it loads programs; a refusal after that takes the pin away again."""
    with no_fd_left(), pytest.raises(VerifierError) as e:
        engine.load_bytes(compiled(tmp_path, "libbpf_pinned_then_refused.bpf.c"), pin_root=pin_root)
    assert one_line(e).startswith("the verifier rejected the program: ") and "outside of the packet" in one_line(e)
    assert "processed" in e.value.log and "pinned map 'pinned_counts'" in e.value.log
    assert os.listdir(pin_root) == []


# The step that failed

@pytest.mark.integration
def test_a_damaged_object_is_an_object_error(engine, tmp_path):
    data = compiled(tmp_path, "pinned_map.bpf.c")
    with no_fd_left(), pytest.raises(ObjectError) as e:
        engine.load_bytes(data[:len(data) // 2])  # its section headers are at the end
    assert one_line(e).startswith("libbpf cannot open the object: ")


@pytest.mark.integration
def test_a_map_the_kernel_refuses_is_named(engine, tmp_path):
    with no_fd_left(), pytest.raises(KernelError) as e:
        engine.load_bytes(compiled(tmp_path, "libbpf_refused_map.bpf.c"))
    assert one_line(e) == "the kernel refused to create map refused: Invalid argument; run with -v for libbpf's log"
    assert e.value.errno == 22


@pytest.mark.integration
def test_an_unresolvable_kconfig_extern_is_named(engine, tmp_path):
    with no_fd_left(), pytest.raises(ObjectError) as e:
        engine.load_bytes(compiled(tmp_path, "kconfig_extern.bpf.c"))
    # Where the kernel's config can be read it lacks the name; where not, libbpf cannot read it: both name it.
    assert "CONFIG_DOES_NOT_EXIST" in one_line(e) and "__kconfig" in one_line(e)
    if os.path.exists("/proc/config.gz") or os.path.exists("/boot/config-" + os.uname().release):
        assert e.value.message == "the object's extern CONFIG_DOES_NOT_EXIST (__kconfig) is not in this kernel's config"
        assert e.value.hint == "declare it __weak to load without it"


@pytest.mark.integration
def test_an_unresolvable_ksym_extern_is_named(engine, tmp_path):
    with no_fd_left(), pytest.raises(ObjectError) as e:
        engine.load_bytes(compiled(tmp_path, "libbpf_ksym_extern.bpf.c"))
    assert one_line(e) == ("the object's extern knp_no_such_variable (__ksym) cannot be resolved: not found in "
                           "kernel BTF; declare it __weak to load without it")


# reuse_maps

@pytest.mark.integration
def test_reused_maps_must_fit_their_declaration(engine, pin_root, tmp_path):
    """A fitting map is used as is; one declared otherwise, an fd that is no map, a name the object lacks: each
    refused naming the map, before libbpf loads anything."""
    data = compiled(tmp_path, "pinned_map.bpf.c")
    with engine.load_bytes(data, pin_root=pin_root) as running:
        with engine.load_bytes(data, reuse_maps={"plain": running.map("plain").fd}, pin_root=pin_root) as obj:
            assert obj.map("plain").id == running.map("plain").id
        with no_fd_left(), pytest.raises(ObjectError) as e:
            engine.load_bytes(data, reuse_maps={"plain": running.map(PINNED).fd}, pin_root=pin_root)
        assert one_line(e) == ("cannot reuse map plain: the map given has max_entries 4 where the object "
                               "declares 1; the object must declare the map as the one in the kernel")
        with no_fd_left(), pytest.raises(ObjectError) as e:
            engine.load_bytes(data, reuse_maps={"absent": running.map("plain").fd}, pin_root=pin_root)
        assert one_line(e) == "cannot reuse map absent: the object declares no such map"
        with open("/dev/null") as not_a_map:
            with no_fd_left(), pytest.raises(KernelError) as e:
                engine.load_bytes(data, reuse_maps={"plain": not_a_map.fileno()}, pin_root=pin_root)
            assert one_line(e).startswith("cannot reuse map plain (fd %d): " % not_a_map.fileno())


# libbpf's wordings, 0.3's and 1.x's, without the kernel

@pytest.mark.parametrize("text", [
    "libbpf: extern (kcfg) #0: symbol 12, off 0, name CONFIG_X\nlibbpf: extern 'CONFIG_X' (strong): not resolved\n",
    "libbpf: extern (kcfg) #0: symbol 12, off 0, name CONFIG_X\nlibbpf: extern CONFIG_X (strong) not resolved\n",
], ids=["libbpf-1.x", "libbpf-0.3"])
def test_unresolved_kconfig_extern_wordings(text):
    assert _extern_error(text, 3).message == "the object's extern CONFIG_X (__kconfig) is not in this kernel's config"


@pytest.mark.parametrize("line", [
    "libbpf: extern (var ksym) 'knp_v': not found in kernel BTF\n",
    "libbpf: extern (ksym) 'knp_v': failed to find BTF ID in vmlinux BTF.\n",
], ids=["libbpf-1.x", "libbpf-0.3"])
def test_unresolved_ksym_extern_wordings(line):
    e = _extern_error("libbpf: extern (ksym) #0: symbol 11, name knp_v\n" + line, 22)
    assert e.message.startswith("the object's extern knp_v (__ksym) cannot be resolved: ")


def test_unreadable_kernel_config_names_the_externs_that_need_it():
    """Weak or not, CONFIG_ externs need the config; LINUX_KERNEL_VERSION, which libbpf knows itself, does not."""
    e = _extern_error("libbpf: extern (kcfg) #0: symbol 1, off 0, name CONFIG_B\n"
                      "libbpf: extern (kcfg) #1: symbol 2, off 4, name LINUX_KERNEL_VERSION\n"
                      "libbpf: extern (kcfg) #2: symbol 3, off 8, name CONFIG_A\n"
                      "libbpf: failed to open system Kconfig\n", 2)
    assert e.message == ("libbpf cannot read this kernel's config (/boot/config-%s, /proc/config.gz) for the "
                         "object's __kconfig externs CONFIG_A, CONFIG_B" % os.uname().release)


@pytest.mark.parametrize("text", [
    "libbpf: prog 'rx': BPF program load failed: Invalid argument\nlibbpf: prog 'rx': failed to load: -22\n",
    "libbpf: load bpf program failed: Invalid argument\nlibbpf: failed to load program 'rx'\n",
], ids=["libbpf-1.x", "libbpf-0.3"])
def test_program_refused_without_a_reason_wordings(engine, text):
    assert engine._program_error(text, 22).message == "the kernel refused to load program rx: Invalid argument"


def test_other_failures_are_no_extern_error():
    assert _extern_error("libbpf: map 'm': failed to create: Invalid argument(-22)\n", 22) is None
