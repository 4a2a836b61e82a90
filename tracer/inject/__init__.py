"""Injection: sending the probe packets (raw sockets, simulated ingress through tc/BPF)."""
