"""Podman from Debian, as these machines need it (PLATFORM_NOTES): runc with cgroupfs, ulimits within the hard
limits and none by default (CONTAINERS_CONF), netavark's bridge networks, made in a network namespace of the test's
own where one is given, so its bridges and veths live there; images imported from a debootstrap root filesystem."""
import json
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
    """podman with this machine's flags and a containers.conf of its own, written into `folder`; with `ns`, its
    networks made in that network namespace (`nsenter`, which unlike `ip netns exec` leaves /sys, and the cgroups
    runc needs, as they are)."""

    def __init__(self, folder, ns=None):
        self.ns = ns
        conf = os.path.join(folder, "containers.conf")
        with open(conf, "w") as f:
            f.write(CONTAINERS_CONF)
        self.env = dict(os.environ, CONTAINERS_CONF=conf)

    def command(self, *args):
        enter = ["nsenter", "--net=/run/netns/" + self.ns] if self.ns else []
        return enter + ["podman"] + GLOBAL_FLAGS + list(args)

    def __call__(self, *args, **kwargs):
        """Run podman; its CompletedProcess (AssertionError with podman's own words if it fails, unless
        check=False)."""
        return sh(*self.command(*args), env=self.env, **kwargs)

    def output(self, *args):
        """Run podman; its output, stripped."""
        return self(*args).stdout.strip()

    def quietly(self, *args):
        """Run podman for cleaning up: failures (already gone) are fine."""
        subprocess.run(self.command(*args), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run(self, name, image, *args, networks=(), annotations=None):
        """Start a detached container with IPv6 off; returns its id."""
        flags = ["--name", name] + RUN_FLAGS + ["--sysctl", "net.ipv6.conf.all.disable_ipv6=1"]
        for network in networks:
            flags += ["--network", network]
        for key, value in sorted((annotations or {}).items()):
            flags += ["--annotation", "%s=%s" % (key, value)]
        return self.output("run", "-d", *(flags + [image] + list(args)))

    def netns(self, name):
        """The file of a container's network namespace (/run/netns/netns-...)."""
        return self.output("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name)

    def address(self, name, network):
        """A container's IPv4 address on a network."""
        return self.output("inspect", "--format", '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % network,
                           name)

    def import_rootfs(self, root, image):
        """Import a root filesystem as an image (tar | podman import)."""
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        try:
            self("import", "-", image, stdin=tar.stdout)
        finally:
            tar.stdout.close()
            assert tar.wait() == 0

    def inspect(self, name):
        """`podman inspect` of one container, as a dict."""
        return json.loads(self("inspect", name).stdout)[0]
