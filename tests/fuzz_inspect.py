#!/usr/bin/env python3
"""`make fuzz`: atheris (libFuzzer) on the object readers and `inspect`, coverage-guided, for a set time.

Any exception other than ProbeError, or a hang past -timeout, is a finding: libFuzzer stops and writes the
input as crash-* (or timeout-*) in the current folder. Seeds come from the corpus folder given.
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with atheris.instrument_imports():
    from probe.bpf import btf, elf, spec  # noqa: F401 - instrumented for coverage
    from probe.inspect import describe, format_text
from probe.errors import ProbeError  # noqa: E402


def one_input(data):
    try:
        format_text("fuzzed.o", describe(data, libbpf=False))
    except ProbeError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
