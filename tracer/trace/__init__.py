"""Tracing: what to instrument (plans) and the event sources that report what the kernel did."""
