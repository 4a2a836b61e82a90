"""fwtrace: why is my port closed? Trace probe packets through Linux netfilter and explain."""

__version__ = "0.1.0"
