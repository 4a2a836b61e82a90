"""Injection planned (pure): the simulated-ingress port and its tc programs; the sending itself is
tracer/system/ (raw sockets, the simulated-ingress port's tc/BPF)."""
