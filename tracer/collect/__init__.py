"""What the kernel reported, parsed (pure): nftrace, NFLOG, kernel-log and conntrack records,
eBPF records and their drop reasons, listeners, counters, the nf_tables table and chain lists."""
