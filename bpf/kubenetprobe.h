/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* The one description of the counters map: the BPF programs write it, probe/layout.py reads it. */
#ifndef KUBENETPROBE_H
#define KUBENETPROBE_H

/* The directions an interface is counted in: XDP and TC ingress count into rx, TC egress into tx. */
enum knp_direction {
	KNP_DIR_RX = 0,
	KNP_DIR_TX = 1,
	KNP_DIR_MAX,
};

/* Interfaces the stats map has room for, each with a key per direction. */
#define KNP_MAX_INTERFACES 8192

/* Key of the stats map. User space makes both keys of an interface, zeroed, before it attaches a program there,
 * and deletes them once it lets the interface go: the programs only look keys up, so a frame on an interface
 * without keys counts nowhere, and an ifindex the kernel hands out again starts at zero. */
struct knp_key {
	__u32 ifindex; /* the interface's, in the probe's network namespace */
	__u32 direction; /* enum knp_direction */
};

enum knp_l3 {
	KNP_L3_IPV4 = 0,
	KNP_L3_IPV6 = 1,
	KNP_L3_ARP = 2,
	KNP_L3_OTHER = 3,
	KNP_L3_MAX,
};

enum knp_l4 {
	KNP_L4_TCP = 0,
	KNP_L4_UDP = 1,
	KNP_L4_ICMP = 2,
	KNP_L4_ICMPV6 = 3,
	KNP_L4_OTHER = 4,
	KNP_L4_MAX,
};

struct knp_counter {
	__u64 packets;
	__u64 bytes; /* wire frames' lengths from the Ethernet header on, FCS excluded (XDP: data_end - data) */
};

/* Value of the per-CPU stats map. Every frame lands in one l3 slot; IP frames also in one l4 slot. */
struct knp_stats {
	struct knp_counter l3[KNP_L3_MAX];
	struct knp_counter l4[KNP_L4_MAX];
};

#endif
