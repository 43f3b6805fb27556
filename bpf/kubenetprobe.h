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

/* Interfaces the probe follows at once: each holds a slot, 1 to KNP_MAX_INTERFACES (0 means "not followed"). */
#define KNP_MAX_INTERFACES 8192

/* ifindexes the slots map has room for, 0 to KNP_MAX_IFINDEX - 1 (4 MiB of u32, one copy, not per CPU). The kernel
 * hands ifindexes out in increasing order within a namespace: on a node that makes and deletes interfaces by the
 * million, one can pass it, and the probe refuses to follow that interface, saying so. */
#define KNP_MAX_IFINDEX (1 << 20)

/* The programs find an interface's counters in two array lookups, both inlined by the verifier (no call):
 * knp_slots[ifindex] is its slot, and knp_stats[KNP_STATS_KEY(slot, direction)] its counters of a direction.
 * User space gives an interface a free slot, zeroes that slot's counters and only then writes knp_slots[ifindex];
 * it writes knp_slots[ifindex] = 0 before it lets the slot go. So a frame on an interface the probe does not follow
 * counts nowhere, and a reused ifindex, or slot, starts at zero. Slot 0 is never given: its entries stay unused. */
#define KNP_STATS_KEY(slot, direction) ((slot) * KNP_DIR_MAX + (direction))
#define KNP_STATS_ENTRIES ((KNP_MAX_INTERFACES + 1) * KNP_DIR_MAX)

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

/* Top talkers: per-peer counters, counted only by the talker programs (kubenetprobe_xp, _ip, _tp), which the probe
 * attaches instead of the plain ones when asked for talkers; the plain programs never touch these maps.
 *
 * A peer is an interface's direction and an address: rx counts the source address, tx the destination; IPv4 as
 * IPv4-mapped IPv6 (::ffff:a.b.c.d). Keyed by ifindex, not slot: a slot given to another interface never meets
 * the peers of the one that had it.
 * Two tables, a and b, per-CPU hashes of a fixed capacity (preallocated: the memory is taken at load, never
 * grown): the programs count in the one knp_peer_live names, and never delete. User space swaps them: it puts
 * the peers it keeps into the idle table (zeroed), names it live, waits for every program that may still count
 * in the other one (a map-in-map update does synchronize_rcu), then reads that one, now quiescent, and empties
 * it. A plain hash, not an LRU: an LRU evicts counts quietly. A packet of a peer the live table has no room for
 * counts in knp_peer_other of its interface's slot and direction, so that every IPv4 and IPv6 frame counts
 * once, under its peer or there: peers + other = l3 ipv4 + ipv6, exactly. */
#define KNP_PEER_ID(ifindex, direction) ((ifindex) * KNP_DIR_MAX + (direction))
/* Peers each table holds by default; user space sets the capacity at load (--talkers-capacity). */
#define KNP_PEERS_DEFAULT 4096
/* The flag of knp_peer_base's keys of retired peers (ifindexes stay below 2^20: bit 31 is free). */
#define KNP_PEER_RETIRED 0x80000000u

struct knp_peer_key {
	__u32 id; /* KNP_PEER_ID(ifindex, direction) */
	__u8 addr[16]; /* network order; IPv4 mapped into IPv6 */
};

#endif
