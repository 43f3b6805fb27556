"""The BPF library: bpf(2), ELF and BTF readers, object specs, loaded maps and programs, two engines, pins.

It imports nothing of the application: only its own modules and the leaf module probe.errors.
"""
