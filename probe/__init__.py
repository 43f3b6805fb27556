"""KubeNetProbe: exact packet statistics of network interfaces, counted by an XDP program.

    from probe.monitor import NetworkMonitor

    with NetworkMonitor() as monitor:
        monitor.attach("eth0")
        print(monitor.packet_stats())

Layers, each a sub-package: probe.bpf (the BPF library: it never imports the application),
probe.net (rtnetlink), probe.attach (one module per hook); the application is the rest of probe.
Importing this package imports nothing else, so `import probe.bpf.spec` pays for the spec alone.
"""
__version__ = "0.1.0"
