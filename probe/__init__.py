"""KubeNetProbe: exact packet statistics of network interfaces, counted by an XDP program.

    with probe.NetworkMonitor() as monitor:
        monitor.attach("eth0")
        print(monitor.packet_stats())
"""
__version__ = "0.1.0"

from probe.errors import ProbeError  # noqa: E402
from probe.monitor import NetworkMonitor, Reporter, open_engine  # noqa: E402

__all__ = ["NetworkMonitor", "ProbeError", "Reporter", "open_engine", "__version__"]
