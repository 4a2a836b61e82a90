// fwtrace: the kernel's own view of the probe packets, from tracepoints.
//
// Rendered by tracer/plan/ebpf_programs.py, which puts #defines in front of this text:
//   SKB_HEAD_OFF, SKB_NH_OFF, SKB_DEV_OFF, DEV_IFINDEX_OFF, DEV_NET_OFF, NET_INUM_OFF  byte offsets from the running kernel's
//       BTF (the headers bcc compiles against may be another kernel's: never use their layouts)
//   HAVE_KFREE_SKB, HAVE_CONSUME_SKB, HAVE_TCP_SEND_RESET, HAVE_ICMP_SEND, HAVE_SOCK_STATE  tracepoints this kernel has
//   HAVE_CONSUME_LOCATION  skb:consume_skb has its `location` field (Linux >= 6.3)
//   FWTRACE_ENUMS: the enum types the tracepoints' fields use, declared by fwtrace (the headers at
//       hand may not have them: enum sk_rst_reason is 6.10+)
//   PKT_MAX  bytes of network + transport header copied per event (power of two)
//
// Only packets whose headers match a key user space put in `probes` are reported: the probe
// itself (source address, source port / echo id, IPv4 id or IPv6 flow label), its replies
// (destination = the probe's source address and port), and ICMP errors quoting the probe.
#include <uapi/linux/ptrace.h>

#define ROLE_PROBE 1
#define ROLE_REPLY 2
#define ROLE_WATCH 3  // a packet of `fwtrace watch`'s filter (`watchf`): reported by kfree_skb only

#define EV_DROP 1
#define EV_RESET 2
#define EV_ICMP 3
#define EV_STATE 4
#define EV_CONSUME 5

struct key_t {
    u8 family;   // 4 or 6
    u8 proto;    // IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6
    u16 port;    // probe: source port / echo id; reply: destination port / echo id (host order)
    u32 ident;   // probe: IPv4 id / IPv6 flow label; reply: 0
    u8 addr[16]; // probe: source address; reply: destination address (IPv4 in the first 4 bytes)
};

struct event_t {
    u64 ts;        // bpf_ktime_get_ns: CLOCK_MONOTONIC, as Python's time.monotonic()
    u64 skb;
    u64 location;  // kfree_skb: the caller of kfree_skb_reason
    u32 kind;      // EV_*
    u32 reason;    // kfree_skb: enum skb_drop_reason; tcp_send_reset: enum sk_rst_reason (6.10+)
    u32 ifindex;   // skb->dev->ifindex, 0 without a device
    s32 stack;     // kernel stack id in `stacks`, < 0 when none
    s32 a;         // icmp: type; state: old state
    s32 b;         // icmp: code; state: new state
    u8 role;       // ROLE_*
    u8 family;
    u16 plen;      // bytes valid in pkt
    u32 netns;     // inode of skb->dev's network namespace, 0 without a device
    u8 pkt[PKT_MAX];
};

// fwtrace watch's filter (tracer/plan/ebpf_keys.py watch_key): family 0 = no watch; proto, port
// (destination, host order) 0 = any; plen bits of addr (the source prefix), 0 = any source.
struct watch_t {
    u8 family;
    u8 proto;
    u16 port;
    u32 plen;
    u8 addr[16];
};

BPF_HASH(probes, struct key_t, u8, 256);
BPF_ARRAY(watchf, struct watch_t, 2);  // [0] IPv4, [1] IPv6
BPF_ARRAY(lost, u64, 1);  // records the full ring buffer refused (the watch's "events lost")
BPF_RINGBUF_OUTPUT(events, 64);
BPF_STACK_TRACE(stacks, 1024);
BPF_PERCPU_ARRAY(scratch, struct event_t, 1);

static __always_inline u8 lookup(u8 family, u8 proto, u16 port, u32 ident, const u8 *addr, int alen) {
    struct key_t k = {};
    k.family = family;
    k.proto = proto;
    k.port = port;
    k.ident = ident;
    __builtin_memcpy(k.addr, addr, 16);
    if (alen == 4)
        __builtin_memset(k.addr + 4, 0, 12);
    u8 *role = probes.lookup(&k);
    return role ? *role : 0;
}

static __always_inline int in_prefix(const u8 *addr, const u8 *want, u32 plen) {
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (plen >= (u32)(i + 1) * 8) {
            if (addr[i] != want[i])
                return 0;
        } else if (plen > (u32)i * 8) {
            u8 mask = (u8)(0xff << (8 - (plen - i * 8)));
            if ((addr[i] & mask) != (want[i] & mask))
                return 0;
        }
    }
    return 1;
}

static __always_inline u8 watched(u8 family, u8 proto, u16 dport, const u8 *src) {
    int slot = family == 4 ? 0 : 1;
    struct watch_t *w = watchf.lookup(&slot);
    if (!w || w->family != family)
        return 0;
    if (w->proto && w->proto != proto)
        return 0;
    if (proto != 6 && proto != 17 && proto != (family == 4 ? 1 : 58))
        return 0;  // as the watch's own matching (tracer/pipeline/watch.py matches)
    if (w->port && (w->port != dport || (proto != 6 && proto != 17)))
        return 0;
    return in_prefix(src, w->addr, w->plen) ? ROLE_WATCH : 0;
}

static __always_inline void emit(struct event_t *ev) {
    if (events.ringbuf_output(ev, sizeof(*ev), 0) != 0) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
}

// Which probe key the packet at `ip` (its network header) matches: ROLE_PROBE, ROLE_REPLY or 0.
static __always_inline u8 classify(const u8 *ip, u8 *family) {
    u8 first = ip[0] >> 4;
    u8 proto, l4off;
    u32 ident;
    const u8 *src, *dst;
    int alen;
    if (first == 4) {
        *family = 4;
        proto = ip[9];
        l4off = (ip[0] & 0xf) * 4;
        if (l4off < 20 || l4off > 60)
            return 0;
        ident = ((u32)ip[4] << 8) | ip[5];
        src = ip + 12;
        dst = ip + 16;
        alen = 4;
    } else if (first == 6) {
        *family = 6;
        proto = ip[6];
        l4off = 40;
        ident = ((u32)(ip[1] & 0xf) << 16) | ((u32)ip[2] << 8) | ip[3];
        src = ip + 8;
        dst = ip + 24;
        alen = 16;
    } else {
        return 0;
    }
    if (l4off + 8 > PKT_MAX)
        return 0;
    const u8 *l4 = ip + (l4off & 0x3f);
    u16 sport = ((u16)l4[0] << 8) | l4[1];
    u16 dport = ((u16)l4[2] << 8) | l4[3];
    u8 icmp = *family == 4 ? 1 : 58;
    if (proto == icmp) {
        u8 type = l4[0];
        u16 id = ((u16)l4[4] << 8) | l4[5];
        if (type == 8 || type == 128)
            return lookup(*family, proto, id, ident, src, alen) ? ROLE_PROBE : watched(*family, proto, 0, src);
        if (type == 0 || type == 129)
            return lookup(*family, proto, id, 0, dst, alen) == ROLE_REPLY ? ROLE_REPLY : 0;
        return 0;  // ICMP errors: matched on the quoted packet by user space (see classify_error)
    }
    if (lookup(*family, proto, sport, ident, src, alen) == ROLE_PROBE)
        return ROLE_PROBE;
    if (lookup(*family, proto, dport, 0, dst, alen) == ROLE_REPLY)
        return ROLE_REPLY;
    return watched(*family, proto, dport, src);
}

// An ICMP error whose quoted packet is a probe counts as a reply.
static __always_inline u8 classify_error(const u8 *ip, u8 family) {
    u8 l4off = family == 4 ? (ip[0] & 0xf) * 4 : 40;
    u8 type = ip[(l4off & 0x3f)];
    if (!((family == 4 && (type == 3 || type == 11)) || (family == 6 && type >= 1 && type <= 4)))
        return 0;
    if (l4off + 8 + 48 > PKT_MAX)
        return 0;
    u8 inner_family = 0;
    return classify(ip + (l4off & 0x3f) + 8, &inner_family) == ROLE_PROBE ? ROLE_REPLY : 0;  // (not ROLE_WATCH)
}

// Fill `ev` from the skb; 0 when the packet is none of ours.
static __always_inline int from_skb(void *skb, struct event_t *ev) {
    unsigned char *head = 0;
    u16 nh = 0;
    void *dev = 0;
    if (!skb)
        return 0;
    bpf_probe_read_kernel(&head, sizeof(head), (u8 *)skb + SKB_HEAD_OFF);
    bpf_probe_read_kernel(&nh, sizeof(nh), (u8 *)skb + SKB_NH_OFF);
    if (!head || nh == 0xffff)
        return 0;
    if (bpf_probe_read_kernel(ev->pkt, PKT_MAX, head + nh) < 0)
        return 0;
    u8 family = 0;
    u8 role = classify(ev->pkt, &family);
    if (!role && family)
        role = classify_error(ev->pkt, family);
    if (!role)
        return 0;
    ev->role = role;
    ev->family = family;
    ev->plen = PKT_MAX;
    ev->skb = (u64)skb;
    bpf_probe_read_kernel(&dev, sizeof(dev), (u8 *)skb + SKB_DEV_OFF);
    ev->ifindex = 0;
    ev->netns = 0;
    if (dev) {
        void *net = 0;
        bpf_probe_read_kernel(&ev->ifindex, sizeof(ev->ifindex), (u8 *)dev + DEV_IFINDEX_OFF);
        bpf_probe_read_kernel(&net, sizeof(net), (u8 *)dev + DEV_NET_OFF);  // possible_net_t's only member
        if (net)
            bpf_probe_read_kernel(&ev->netns, sizeof(ev->netns), (u8 *)net + NET_INUM_OFF);
    }
    ev->ts = bpf_ktime_get_ns();
    return 1;
}

static __always_inline struct event_t *fresh(void) {
    int zero = 0;
    struct event_t *ev = scratch.lookup(&zero);
    if (ev) {
        ev->location = 0;
        ev->reason = 0;
        ev->a = 0;
        ev->b = 0;
        ev->stack = -1;
    }
    return ev;
}

#ifdef HAVE_KFREE_SKB
TRACEPOINT_PROBE(skb, kfree_skb) {
    struct event_t *ev = fresh();
    if (!ev || !from_skb((void *)args->skbaddr, ev))
        return 0;
    ev->kind = EV_DROP;
    ev->reason = args->reason;
    ev->location = (u64)args->location;
    ev->stack = stacks.get_stackid(args, 0);
    emit(ev);
    return 0;
}
#endif

#ifdef HAVE_CONSUME_SKB
// The probe taken by the stack without a drop reason (delivered, or dropped silently: a listener
// with a full accept queue consumes the SYN it cannot queue). Replies are left out: consuming
// them is their normal end.
TRACEPOINT_PROBE(skb, consume_skb) {
    struct event_t *ev = fresh();
    if (!ev || !from_skb((void *)args->skbaddr, ev) || ev->role != ROLE_PROBE)
        return 0;
    ev->kind = EV_CONSUME;
#ifdef HAVE_CONSUME_LOCATION
    ev->location = (u64)args->location;
#endif
    ev->stack = stacks.get_stackid(args, 0);
    emit(ev);
    return 0;
}
#endif

#ifdef HAVE_TCP_SEND_RESET
// The RST the stack itself sends (no socket, a closed port): skbaddr is the packet answered.
TRACEPOINT_PROBE(tcp, tcp_send_reset) {
    struct event_t *ev = fresh();
    if (!ev || !from_skb((void *)args->skbaddr, ev) || ev->role == ROLE_WATCH)
        return 0;
    ev->kind = EV_RESET;
#ifdef HAVE_RST_REASON
    ev->reason = args->reason;
#endif
    ev->stack = stacks.get_stackid(args, 0);
    emit(ev);
    return 0;
}
#endif

#ifdef HAVE_ICMP_SEND
// An ICMP error the stack sends about a packet (skbaddr: the packet it quotes).
TRACEPOINT_PROBE(icmp, icmp_send) {
    struct event_t *ev = fresh();
    if (!ev || !from_skb((void *)args->skbaddr, ev) || ev->role == ROLE_WATCH)
        return 0;
    ev->kind = EV_ICMP;
    ev->a = args->type;
    ev->b = args->code;
    ev->stack = stacks.get_stackid(args, 0);
    emit(ev);
    return 0;
}
#endif

#ifdef HAVE_SOCK_STATE
// A TCP socket of the service changing state for the probe's flow (seen from the socket: its
// peer is the probe's source).
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6 /* IPPROTO_TCP */)
        return 0;
    u8 family = args->family == 2 /* AF_INET */ ? 4 : 6;
    u8 peer[16] = {};
    if (family == 4)
        __builtin_memcpy(peer, args->daddr, 4);
    else
        __builtin_memcpy(peer, args->daddr_v6, 16);
    if (lookup(family, 6, args->dport, 0, peer, family == 4 ? 4 : 16) != ROLE_REPLY)
        return 0;
    struct event_t *ev = fresh();
    if (!ev)
        return 0;
    ev->kind = EV_STATE;
    ev->role = ROLE_REPLY;
    ev->family = family;
    ev->skb = (u64)args->skaddr;
    ev->ifindex = 0;
    ev->netns = 0;
    ev->plen = 0;
    ev->a = args->oldstate;
    ev->b = args->newstate;
    ev->ts = bpf_ktime_get_ns();
    // The socket's own addresses in pkt: local (16 bytes), then the peer, then local and peer port.
    if (family == 4) {
        __builtin_memcpy(ev->pkt, args->saddr, 4);
    } else {
        __builtin_memcpy(ev->pkt, args->saddr_v6, 16);
    }
    __builtin_memcpy(ev->pkt + 16, peer, 16);
    ev->pkt[32] = args->sport >> 8;
    ev->pkt[33] = args->sport & 0xff;
    ev->pkt[34] = args->dport >> 8;
    ev->pkt[35] = args->dport & 0xff;
    ev->plen = 36;
    emit(ev);
    return 0;
}
#endif
