// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* Pushes TAGS VLAN tags onto every packet at a TC hook, as a VLAN device over a NIC that inserts tags would: the
 * outermost (802.1ad) held apart in skb->vlan_tci, the others (802.1Q) in the data. For the tests of the probe's TC
 * programs on tagged packets, GSO ones among them, where this kernel has no VLAN devices. It hands every packet on
 * (TC_ACT_UNSPEC), to the programs attached after it. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef TAGS
#define TAGS 1
#endif

SEC("tc")
int knptest_vlan_push(struct __sk_buff *skb)
{
	int i;

	/* Innermost first: each push moves the tag held in skb->vlan_tci into the data. */
	for (i = TAGS; i > 0; i--)
		bpf_skb_vlan_push(skb, bpf_htons(i == 1 ? ETH_P_8021AD : ETH_P_8021Q), 100 + i);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
