"""eBPF probes (bcc): the kernel's own view of the probe packets — drop reasons, the stack's
replies, socket states, netfilter hook verdicts. Pure: btf, render, reasons, keys, decode,
objcache, timeline, findings, policy, text. System: headers, loader, bpfsys, phase."""
