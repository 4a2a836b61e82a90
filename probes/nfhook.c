// fwtrace: which netfilter hook returned which verdict for the probe packets: nf_hook_slow()
// entry and return, through kprobe/kretprobe (USE_KPROBE) or fentry/fexit (USE_FENTRY).
//
// Rendered by tracer/plan/ebpf_programs.py: the offsets (SKB_*, DEV_IFINDEX_OFF, HOOK_STATE_*) come from
// the running kernel's BTF; nothing here relies on the layouts in the headers bcc compiles with.
// This file is loaded only where the kernel allows kprobes or fentry (`fwtrace doctor` says).
//
// int nf_hook_slow(struct sk_buff *skb, struct nf_hook_state *state,
//                  const struct nf_hook_entries *e, unsigned int s);
// returns 1 when every hook function accepted, 0 when one stole or queued it, -EPERM on drop.
#include <uapi/linux/ptrace.h>

struct key_t {
    u8 family;
    u8 proto;
    u16 port;
    u32 ident;
    u8 addr[16];
};

struct hook_event_t {
    u64 ts;
    u64 skb;
    u32 hook;    // NF_INET_* (or NF_NETDEV_* for pf NFPROTO_NETDEV)
    u32 pf;      // NFPROTO_*
    s32 verdict; // nf_hook_slow's return value
    u32 index;   // the entry index it started at (`s`)
    u8 pkt[PKT_MAX];
};

// A probe's nf_hook_slow call between entry and return. The kretprobe does not say which call
// returns: a REJECT sends its ICMP error / RST from inside the INPUT hook, so nf_hook_slow runs
// again (OUTPUT, POSTROUTING) nested in the same context and returns first. `nested` counts those
// calls, and the packet is kept here, not in the per-CPU scratch that nested entries overwrite.
struct entry_t {
    u32 nested;
    u32 pad;
    struct hook_event_t ev;
};

BPF_HASH(probes, struct key_t, u8, 256);  // filled by user space like drops.c's
BPF_HASH(inflight, u64, struct entry_t, 1024);
BPF_RINGBUF_OUTPUT(hook_events, 16);
BPF_PERCPU_ARRAY(scratch, struct entry_t, 1);

static __always_inline int ours(void *skb, u8 *pkt) {
    unsigned char *head = 0;
    u16 nh = 0;
    bpf_probe_read_kernel(&head, sizeof(head), (u8 *)skb + SKB_HEAD_OFF);
    bpf_probe_read_kernel(&nh, sizeof(nh), (u8 *)skb + SKB_NH_OFF);
    if (!head || bpf_probe_read_kernel(pkt, PKT_MAX, head + nh) < 0)
        return 0;
    struct key_t k = {};
    if ((pkt[0] >> 4) == 4) {
        u8 l4 = (pkt[0] & 0xf) * 4;
        k.family = 4;
        k.proto = pkt[9];
        k.ident = ((u32)pkt[4] << 8) | pkt[5];
        __builtin_memcpy(k.addr, pkt + 12, 4);
        l4 &= 0x3f;
        k.port = k.proto == 1 ? (((u16)pkt[l4 + 4] << 8) | pkt[l4 + 5]) : (((u16)pkt[l4] << 8) | pkt[l4 + 1]);
    } else if ((pkt[0] >> 4) == 6) {
        k.family = 6;
        k.proto = pkt[6];
        k.ident = ((u32)(pkt[1] & 0xf) << 16) | ((u32)pkt[2] << 8) | pkt[3];
        __builtin_memcpy(k.addr, pkt + 8, 16);
        k.port = k.proto == 58 ? (((u16)pkt[44] << 8) | pkt[45]) : (((u16)pkt[40] << 8) | pkt[41]);
    } else {
        return 0;
    }
    u8 *role = probes.lookup(&k);
    return role && *role == 1;
}

// Entry and return meet on this key: the thread, and the CPU, since softirqs that interrupt the
// idle tasks all run as pid 0 (a thread moved to another CPU meanwhile loses its record).
static __always_inline u64 inflight_key(void) {
    return (bpf_get_current_pid_tgid() & 0xffffffff) | ((u64)bpf_get_smp_processor_id() << 32);
}

static __always_inline int on_entry(void *skb, void *state, u32 s) {
    u64 key = inflight_key();
    struct entry_t *outer = inflight.lookup(&key);
    if (outer) {  // a call inside a probe's hook (e.g. a REJECT's reply): counted, not traced
        outer->nested++;
        return 0;
    }
    int zero = 0;
    struct entry_t *e = scratch.lookup(&zero);
    if (!e || !skb || !ours(skb, e->ev.pkt))
        return 0;
    u8 hook = 0, pf = 0;
    bpf_probe_read_kernel(&hook, 1, (u8 *)state + HOOK_STATE_HOOK_OFF);
    bpf_probe_read_kernel(&pf, 1, (u8 *)state + HOOK_STATE_PF_OFF);
    e->nested = 0;
    e->ev.skb = (u64)skb;
    e->ev.hook = hook;
    e->ev.pf = pf;
    e->ev.index = s;
    inflight.update(&key, e);
    return 0;
}

static __always_inline int on_return(int ret) {
    u64 key = inflight_key();
    struct entry_t *e = inflight.lookup(&key);
    if (!e)
        return 0;
    if (e->nested) {  // a nested call returned, not the probe's
        e->nested--;
        return 0;
    }
    e->ev.ts = bpf_ktime_get_ns();
    e->ev.verdict = ret;
    hook_events.ringbuf_output(&e->ev, sizeof(e->ev), 0);
    inflight.delete(&key);
    return 0;
}

#ifdef USE_KPROBE
int kprobe__nf_hook_slow(struct pt_regs *ctx, void *skb, void *state, void *e, u32 s) {
    return on_entry(skb, state, s);
}

int kretprobe__nf_hook_slow(struct pt_regs *ctx) {
    return on_return((int)PT_REGS_RC(ctx));
}
#endif

#ifdef USE_FENTRY
KFUNC_PROBE(nf_hook_slow, void *skb, void *state, void *e, u32 s) {
    return on_entry(skb, state, s);
}

KRETFUNC_PROBE(nf_hook_slow, void *skb, void *state, void *e, u32 s, int ret) {
    return on_return(ret);
}
#endif
