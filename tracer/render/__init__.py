"""Renderers of a probe report: terminal text, markdown, HTML, the packet-flow picture, pcapng, JSON.

All pure: they take a report (its attributes and `to_json()`) and return text or bytes; the CLI
and the evidence bundle decide where it goes.
"""
