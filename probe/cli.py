"""The kubenetprobe command: arguments in, reports out, every failure one line and an exit code."""
import argparse
import errno
import os
import select
import signal
import sys

import probe
from probe import interfaces, link, log
from probe.errors import ProbeError
from probe.monitor import LOADERS, NetworkMonitor, Reporter
from probe.output import Printer

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# $EBPF_IMPLEMENTATION, the original project's loader names -> ours.
ORIGINAL_LOADERS = {"cilium": "native", "libbpfgo": "libbpf", "embedded": "auto"}

DESCRIPTION = """\
Count the packets an interface receives, exactly, with an XDP program in the kernel:
packets, bytes and rates, broken down by L3 (IPv4, IPv6, ARP) and L4 (TCP, UDP, ICMP) protocol.
Needs root (or CAP_BPF + CAP_NET_ADMIN). Stop with Ctrl-C: the final report is printed and
the program detached. Attached through a bpf_link (the default where the kernel has XDP links,
5.9 and newer), nothing stays attached after the probe exits, even if it is killed; attached through
netlink (older kernels), a killed probe leaves its program behind: `kubenetprobe detach` removes it."""

EPILOG = """\
examples:
  kubenetprobe                         watch the default route's interface, a report a second
  kubenetprobe -i eth0 -i eth1 --interval 5
  kubenetprobe -i eth0 --count 1 --interval 0 --json    one report right after attaching
  kubenetprobe --json | jq .rx.pps
  kubenetprobe detach -i eth0          remove a program a killed probe left behind (netlink only)

environment:
  NETWORK_INTERFACE     interface to watch when no -i is given
  KUBENETPROBE_LOADER   loader when no --loader is given: auto, libbpf or native
  EBPF_IMPLEMENTATION   the original project's loader names: cilium (native), libbpfgo (libbpf),
                        embedded (auto)

exit status: 0 success, 1 failure (one line on stderr says why), 2 bad usage"""


def _interval(text):
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("%r is not a number of seconds >= 0" % text)
    return value


def _count(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("%r is not a whole number >= 1" % text)
    return value


def parser():
    """The argument parser of the kubenetprobe command."""
    p = argparse.ArgumentParser(prog="kubenetprobe", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--interface", action="append", metavar="NAME",
                   help="interface to watch; repeat for several (default: $NETWORK_INTERFACE, "
                        "else the default route's interface)")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="SECONDS",
                   help="seconds between reports (default: 1)")
    p.add_argument("--count", type=_count, metavar="N", help="stop after N reports (default: run until stopped)")
    p.add_argument("--json", action="store_true", help="print one JSON object per interface per report")
    p.add_argument("--mode", choices=link.MODES, default="auto",
                   help="XDP mode: native (in the driver), generic (in the stack), or auto: native where "
                        "the driver has it, else generic (default)")
    p.add_argument("--loader", choices=LOADERS,
                   help="what loads the program: libbpf (the system's libbpf.so), native (bpf(2) alone, "
                        "no libbpf needed), or auto: libbpf where it is installed, else native (default: "
                        "$KUBENETPROBE_LOADER, else $EBPF_IMPLEMENTATION, else auto)")
    p.add_argument("--attach", choices=link.METHODS, default="auto", dest="method",
                   help="how to attach: link (a bpf_link, kernel 5.9+, gone when the probe is), netlink "
                        "(older kernels), or auto: link where the kernel has it, else netlink (default)")
    p.add_argument("--force", action="store_true",
                   help="replace an XDP program that is already attached (default: refuse)")
    p.add_argument("-v", "--verbose", action="store_true", help="say more; on failure, show the traceback and "
                                                                  "libbpf's or the verifier's log")
    p.add_argument("--version", action="version", version="kubenetprobe " + probe.__version__)
    return p


def loader_from(environ):
    """The loader named by the environment: $KUBENETPROBE_LOADER, else $EBPF_IMPLEMENTATION, else auto."""
    loader = environ.get("KUBENETPROBE_LOADER")
    if loader:
        if loader not in LOADERS:
            raise ProbeError("$KUBENETPROBE_LOADER is %r" % loader, hint="use one of %s" % ", ".join(LOADERS))
        return loader
    original = environ.get("EBPF_IMPLEMENTATION")
    if original:
        if original not in ORIGINAL_LOADERS:
            raise ProbeError("$EBPF_IMPLEMENTATION is %r" % original,
                             hint="use one of %s" % ", ".join(sorted(ORIGINAL_LOADERS)))
        return ORIGINAL_LOADERS[original]
    return "auto"


def detach_parser():
    """The argument parser of `kubenetprobe detach`."""
    p = argparse.ArgumentParser(prog="kubenetprobe detach",
                                description="Remove the XDP program that a killed kubenetprobe left on an "
                                            "interface (possible when it attached through netlink).")
    p.add_argument("-i", "--interface", action="append", metavar="NAME", required=True,
                   help="interface to clean; repeat for several")
    p.add_argument("--force", action="store_true", help="remove the XDP program even if it is not kubenetprobe's")
    p.add_argument("-v", "--verbose", action="store_true", help="on failure, show the traceback")
    return p


def run_detach(args):
    """Remove kubenetprobe's program from each interface named."""
    for name in args.interface:
        removed = link.detach(name, force=args.force)
        print("detached XDP program %s from %s" % (removed, name))
    return EXIT_OK


class _Stopper(object):
    """Turns SIGINT and SIGTERM into a flag that wakes the wait between reports."""

    def __init__(self):
        self.stopped = False
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        os.set_blocking(self._read, False)
        signal.set_wakeup_fd(write)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.stopped = True

    def wait(self, seconds):
        """Sleep up to `seconds`; True when a stop signal came."""
        if not self.stopped and seconds > 0:
            select.select([self._read], [], [], seconds)
        return self.stopped


def _to_stderr(level, text):
    sys.stderr.write("kubenetprobe: %s\n" % text)


def _traceback():
    import traceback
    traceback.print_exc()


def run(args):
    """Attach to the interfaces, print reports until the count is reached or a signal comes, detach."""
    names = args.interface or [os.environ.get("NETWORK_INTERFACE") or interfaces.default_interface()]
    stopper = _Stopper()  # before attaching, so a signal during attach still ends in a detach
    printer = Printer(sys.stdout, json_lines=args.json)
    with NetworkMonitor(loader=args.loader or loader_from(os.environ)) as monitor:
        for name in names:
            monitor.attach(name, mode=args.mode, force=args.force, method=args.method)
        reporter = Reporter(monitor)
        done = 0
        while True:
            stopped = stopper.wait(args.interval)
            done += 1
            last = stopped or (args.count is not None and done >= args.count)
            printer.write(reporter.reports(final=last))
            if last:
                return EXIT_OK


def _explain(e):
    """Add what to do to errors that arrive without it."""
    if e.hint is None and e.errno == errno.ENOSYS:
        e.hint = "this kernel has no bpf(2); kubenetprobe needs Linux 4.18 or newer with BPF enabled"
    return e


def main(argv=None):
    """Run the command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["detach"]:
        args, action = detach_parser().parse_args(argv[1:]), run_detach
    else:
        args, action = parser().parse_args(argv), run
    log.use_handler(_to_stderr, log.DEBUG if args.verbose else log.INFO)
    try:
        return action(args)
    except ProbeError as e:
        if args.verbose:
            _traceback()
            if e.log:
                sys.stderr.write(e.log if e.log.endswith("\n") else e.log + "\n")
        sys.stderr.write("kubenetprobe: error: %s\n" % _explain(e))
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, like other tools in a pipe.
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except Exception as e:  # a bug: still one line, with the traceback under -v
        if args.verbose:
            _traceback()
        sys.stderr.write("kubenetprobe: error: unexpected %s: %s; run with -v and report it\n"
                         % (type(e).__name__, e))
        return EXIT_FAILURE
