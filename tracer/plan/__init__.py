"""Plans as data (pure): what to instrument and inject, the commands the pipeline yields, how each
change is undone and proven undone, the eBPF programs' text and keys."""
