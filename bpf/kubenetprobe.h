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
 * Two tables, a and b, per-CPU arrays of a fixed size (a power of two, set at load: preallocated, never grown).
 * Each CPU's copy of a table is a hash table of its own, open addressing: a peer's entry is the first one from
 * knp_peer_hash(seed, peer) & mask on (talkers.h), within KNP_PEER_PROBES, that holds the peer or is free (id 0), and a CPU
 * writes only its own copy: no lock, no atomic. (Per-CPU hash maps took ten times as long to count a peer, ~30 ns
 * against ~3: a call, jhash and memcmp over the key, a bucket walk.) Copies hold a peer at different indexes, or
 * not at all: user space adds up every copy's entries by peer.
 * The programs count in the table knp_peer_conf names live, and never free an entry. User space swaps them: it
 * gives the idle table (empty) an entry for every peer it keeps, in every copy, names it live, waits for every
 * program that may still count in the other one (a map-in-map update does synchronize_rcu), then reads that one,
 * now quiescent, and empties it. A packet of a peer with no entry within KNP_PEER_PROBES counts in knp_peer_other
 * of its interface's slot and direction, so that every IPv4 and IPv6 frame counts once, under its peer or there:
 * peers + other = l3 ipv4 + ipv6, exactly. */
#define KNP_PEER_ID(ifindex, direction) ((ifindex) * KNP_DIR_MAX + (direction))
/* Peers the probe keeps by default; each table has twice as many entries (--talkers-capacity). */
#define KNP_PEERS_DEFAULT 4096
#define KNP_PEER_TABLE_DEFAULT (2 * KNP_PEERS_DEFAULT)
/* Entries tried from a peer's hash on. The tables are at most half full of the peers kept: at that load, linear
 * probing needs more than 32 tries for about one peer in 200,000 (simulated), which then counts in `other`. */
#define KNP_PEER_PROBES 32
/* The flag of knp_peer_base's keys of retired peers (ifindexes stay below 2^20: bit 31 is free). */
#define KNP_PEER_RETIRED 0x80000000u

/* A peer as user space keeps it across runs (knp_peer_base). */
struct knp_peer_key {
	__u32 id; /* KNP_PEER_ID(ifindex, direction) */
	__u8 addr[16]; /* network order; IPv4 mapped into IPv6 */
};

/* An entry of a peer table. */
struct knp_peer {
	__u8 addr[16]; /* as in knp_peer_key; first, so that the programs compare it in two 8-byte words */
	__u32 id; /* as in knp_peer_key; 0: the entry is free (ifindexes start at 1) */
	__u32 pad;
	struct knp_counter counter;
};

/* The value of knp_peer_conf, written by user space. */
struct knp_peer_conf {
	__u32 live; /* the table the programs count in: 0 a, 1 b */
	__u32 mask; /* the tables' size - 1 */
	__u32 seed; /* of knp_peer_hash(), chosen at random when the tables are made */
};

#endif
