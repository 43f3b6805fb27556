"""Podman from Debian, as these machines need it (PLATFORM_NOTES): runc with cgroupfs, ulimits within the hard
limits and none by default (CONTAINERS_CONF), netavark's bridge networks; run in a network namespace of the test's
own, so its bridges and veths live there; images imported from a debootstrap root filesystem."""
import os
import subprocess

from netns import sh

GLOBAL_FLAGS = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
RUN_FLAGS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
CONTAINERS_CONF = """[containers]
default_ulimits = []

[network]
network_backend = "netavark"
"""


class Podman(object):
    """podman with this machine's flags, its networks made in network namespace `ns` (`nsenter`, which unlike
    `ip netns exec` leaves /sys, and the cgroups runc needs, as they are)."""

    def __init__(self, ns, folder):
        self.ns = ns
        self.conf = os.path.join(folder, "containers.conf")
        with open(self.conf, "w") as f:
            f.write(CONTAINERS_CONF)

    def command(self, *args):
        return ["nsenter", "--net=/run/netns/" + self.ns, "podman"] + GLOBAL_FLAGS + list(args)

    def env(self):
        return dict(os.environ, CONTAINERS_CONF=self.conf)

    def __call__(self, *args, **kwargs):
        """Run podman; its output, stripped (AssertionError with podman's own words if it fails)."""
        return sh(*self.command(*args), env=self.env(), **kwargs).stdout.strip()

    def quietly(self, *args):
        """Run podman for cleaning up: failures (already gone) are fine."""
        subprocess.run(self.command(*args), env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run(self, name, image, *args, networks=(), annotations=None):
        """Start a detached container with IPv6 off; returns its id."""
        flags = ["--name", name] + RUN_FLAGS + ["--sysctl", "net.ipv6.conf.all.disable_ipv6=1"]
        for network in networks:
            flags += ["--network", network]
        for key, value in sorted((annotations or {}).items()):
            flags += ["--annotation", "%s=%s" % (key, value)]
        return self("run", "-d", *(flags + [image] + list(args)))

    def netns(self, name):
        """The file of a container's network namespace (/run/netns/netns-...)."""
        return self("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name)

    def address(self, name, network):
        """A container's IPv4 address on a network."""
        return self("inspect", "--format", '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % network, name)

    def import_rootfs(self, root, image):
        """Import a root filesystem as an image (tar | podman import)."""
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        try:
            sh(*self.command("import", "-", image), env=self.env(), stdin=tar.stdout)
        finally:
            tar.stdout.close()
            assert tar.wait() == 0
