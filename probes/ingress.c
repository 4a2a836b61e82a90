// SPDX-License-Identifier: GPL-2.0
/*
 * Simulated ingress: the two tc programs fwtrace generates, written as C for reference.
 *
 * fwtrace does NOT compile this file: tracer/inject/bpfasm.py assembles the same logic directly
 * (a few dozen instructions, loaded with bpf(2) BPF_PROG_LOAD as SCHED_CLS, license "GPL"),
 * which needs neither clang nor kernel headers and costs a syscall instead of seconds.
 * `fwtrace probe --print-bpf` prints the generated instructions. Constants written here as
 * macros are filled in per run (interface indexes, MAC, the probe's source address and ports).
 *
 * Build only to compare: clang -O2 -target bpf -c ingress.c -o ingress.o
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef VIA_IFINDEX
#define VIA_IFINDEX 2                   /* the interface the probe "arrives" on (eth0) */
#endif
#ifndef CAPTURE_IFINDEX
#define CAPTURE_IFINDEX 7               /* fwtrace's end of the injection veth */
#endif
#define VIA_MAC_HI 0x6a1b2c3du          /* eth0's MAC, first 4 bytes */
#define VIA_MAC_LO 0x4e5fu              /* ... last 2 bytes */
#define PROBE_SRC 0xcb007105u           /* 203.0.113.5, the made-up client */
#define SPORT_LO 40000                  /* the probes' source ports (or ICMP echo ids) */
#define SPORT_HI 40000
#define L4 IPPROTO_TCP

/*
 * On the tc ingress of the injection veth's peer: frames fwtrace wrote into its end, addressed
 * to eth0's own MAC (else eth_type_trans marks them PACKET_OTHERHOST and IP drops them), go to
 * eth0's receive path: PREROUTING with iif eth0, routing, rp_filter, conntrack, INPUT/FORWARD.
 * Nothing else belongs on this veth: drop it.
 */
SEC("tc")
int fwtrace_inject(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	__u8 *p = data;

	if (data + 6 > end)
		return TC_ACT_SHOT;
	if (bpf_ntohl(*(__u32 *)p) != VIA_MAC_HI || bpf_ntohs(*(__u16 *)(p + 4)) != VIA_MAC_LO)
		return TC_ACT_SHOT;
	return bpf_redirect(VIA_IFINDEX, BPF_F_INGRESS);
}

/*
 * On the tc egress of every interface a reply could leave by: only the probe's flow, i.e.
 * IPv4 (no options) to PROBE_SRC with destination port in the probes' source ports, or an ICMP
 * error quoting such a probe, goes into the injection veth (its AF_PACKET socket captures it; the
 * stack drops it as not addressed to the veth). TC_ACT_UNSPEC for everything else: tc carries on
 * with the next filter, as if this one were not there. IPv6 is the same with the fixed 40-byte
 * header (offsets 54 / 102); on an interface without link header every offset is 14 less.
 */
SEC("tc")
int fwtrace_reply(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	__u8 *p = data;

	if (data + 38 <= end && bpf_ntohs(*(__u16 *)(p + 12)) == ETH_P_IP && p[14] == 0x45 &&
	    bpf_ntohl(*(__u32 *)(p + 30)) == PROBE_SRC && p[23] == L4) {
		__u16 dport = bpf_ntohs(*(__u16 *)(p + 36));
		if (dport >= SPORT_LO && dport <= SPORT_HI)
			return bpf_redirect(CAPTURE_IFINDEX, BPF_F_INGRESS);
	}
	/* ICMP error: 8-byte ICMP header, quoted IPv4 header (20 bytes), quoted source port */
	if (data + 64 <= end && bpf_ntohs(*(__u16 *)(p + 12)) == ETH_P_IP && p[14] == 0x45 &&
	    bpf_ntohl(*(__u32 *)(p + 30)) == PROBE_SRC && p[23] == IPPROTO_ICMP && p[51] == L4) {
		__u16 quoted = bpf_ntohs(*(__u16 *)(p + 62));
		if (quoted >= SPORT_LO && quoted <= SPORT_HI)
			return bpf_redirect(CAPTURE_IFINDEX, BPF_F_INGRESS);
	}
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
