#!/usr/bin/env python3
"""Print kubenetprobe's seccomp profile: the container runtime's default profile with bpf(2) allowed.

The default profile (containers-common's /usr/share/containers/seccomp.json, which podman and CRI-O use)
allows bpf(2) only to a process with CAP_SYS_ADMIN. The probe runs with CAP_BPF, CAP_NET_ADMIN and
CAP_PERFMON instead, and needs nothing else the default refuses: it opens no perf events, enters no
namespace and, with a bpffs mounted at /sys/fs/bpf on the node, mounts nothing. So bpf is taken out of the rules that tie it to CAP_SYS_ADMIN and allowed on its own; every other
rule stays as it is. Regenerate after a runtime upgrade:

    python3 deploy/seccomp/make_profile.py /usr/share/containers/seccomp.json > deploy/seccomp/kubenetprobe.json
"""
import json
import sys

ADDED = ("bpf",)


def profile(default):
    """The default profile (a dict) with the syscalls in ADDED allowed whatever the capabilities."""
    rules = []
    for rule in default["syscalls"]:
        names = [name for name in rule["names"] if name not in ADDED]
        if names:
            rules.append(dict(rule, names=names))
    rules.append({"names": list(ADDED), "action": "SCMP_ACT_ALLOW", "args": [],
                  "comment": "kubenetprobe: load and attach BPF programs with CAP_BPF, without CAP_SYS_ADMIN",
                  "includes": {}, "excludes": {}})
    return dict(default, syscalls=rules)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/containers/seccomp.json"
    with open(path) as f:
        default = json.load(f)
    json.dump(profile(default), sys.stdout, indent="\t")  # as the default is laid out
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
