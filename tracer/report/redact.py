"""--redact: addresses other than the probe's replaced by stable placeholders. No I/O.

The same address gets the same placeholder everywhere in a bundle (so a reader can still follow
it from a rule to a route), and placeholders are addresses themselves (198.18.0.0/15, the
benchmarking range, and 2001:db8:fade::/48), so redacted rulesets still parse. Prefix lengths
stay. Loopback, unspecified, link-local and multicast addresses say nothing about a site and stay.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable

_V4 = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3})(?![\w.])")
_V6 = re.compile(r"(?<![\w:.])((?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![\w:])")


class Redactor:
    def __init__(self, keep: Iterable[str]) -> None:
        self.keep = {ipaddress.ip_address(a) for a in keep}
        self.map: dict[ipaddress._BaseAddress, str] = {}

    def _placeholder(self, addr: ipaddress._BaseAddress) -> str:
        if addr not in self.map:
            n = sum(1 for a in self.map if a.version == addr.version) + 1
            if addr.version == 4:
                self.map[addr] = str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.0")) + n))
            else:
                self.map[addr] = str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("2001:db8:fade::")) + n))
        return self.map[addr]

    def _sub(self, m: "re.Match[str]") -> str:
        text = m.group(1)
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return m.group(0)
        if addr in self.keep or addr.is_loopback or addr.is_unspecified or addr.is_link_local or addr.is_multicast:
            return m.group(0)
        if addr.version == 4 and str(addr) in ("255.255.255.255",):
            return m.group(0)
        return m.group(0).replace(text, self._placeholder(addr))

    def text(self, s: str) -> str:
        return _V6.sub(self._sub, _V4.sub(self._sub, s))
