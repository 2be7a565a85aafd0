"""Prove the lab's network before anything converges on it: names, route, mirror, cache.

A lab host that cannot resolve names makes every later apt task wait without a word (that is
how a fresh machine without podman's DNS hung the demo). So `lab up` ends by asking every host,
in parallel and within seconds, to resolve every other lab host and the Debian mirror and to
fetch a few bytes from the mirror; it fails naming the host, what failed and the fix. The
package cache is asked too, but only reported: hosts fall back to the mirror without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from opsledger.errors import Problem
from opsledger.lab.podman import podman

CHECK_TIMEOUT = 25  # whole probe per host; each lookup is bounded by resolv.conf's own timeouts

# Runs inside each host with the image's python3: plain stdlib, JSON out.
PROBE = r"""
import json, socket, sys, urllib.request
names, release_url, cache_url = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
out = {"dns": {}, "mirror": "", "cache": ""}
for name in [n for n in names if n]:
    try:
        socket.getaddrinfo(name, None)
        out["dns"][name] = ""
    except OSError as exc:
        out["dns"][name] = str(exc) or type(exc).__name__
def fetch(proxies):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
    request = urllib.request.Request(release_url, headers={"Range": "bytes=0-63"})
    with opener.open(request, timeout=6) as response:
        response.read(64)
try:
    fetch({})
except Exception as exc:
    out["mirror"] = str(exc) or type(exc).__name__
if cache_url:
    try:
        fetch({"http": cache_url})
    except Exception as exc:
        out["cache"] = str(exc) or type(exc).__name__
print(json.dumps(out))
"""


@dataclass
class HostNetwork:
    """What one host could reach: name -> error ("" = resolved), mirror and cache errors."""

    host: str
    dns: dict[str, str] = field(default_factory=dict)
    mirror: str = ""
    cache: str = ""
    probe: str = ""  # the probe itself could not run


def parse_probe(host: str, returncode: int, stdout: str, stderr: str) -> HostNetwork:
    """Turn the probe's output into a HostNetwork; a probe that died is a finding too."""
    try:
        data = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    except (json.JSONDecodeError, IndexError):
        data = None
    if returncode != 0 or not isinstance(data, dict):
        reason = "timed out" if returncode == 124 else (stderr.strip().splitlines() or ["?"])[-1]
        return HostNetwork(host, probe=f"the network probe failed ({reason[:120]})")
    return HostNetwork(
        host,
        dns={str(k): str(v) for k, v in (data.get("dns") or {}).items()},
        mirror=str(data.get("mirror") or ""),
        cache=str(data.get("cache") or ""),
    )


def problems_of(
    results: Sequence[HostNetwork], *, network: str, mirror: str, lab_hosts: Sequence[str]
) -> list[Problem]:
    """One problem per host and kind of failure (DNS of lab names, mirror DNS, mirror HTTP)."""
    mirror_host = urlsplit(mirror).hostname or mirror
    problems = []
    for result in results:
        if result.probe:
            problems.append(
                Problem(
                    result.probe,
                    field=result.host,
                    fix=f"look inside: podman exec -it <container of {result.host}> bash",
                )
            )
            continue
        lab_failed = [n for n in lab_hosts if result.dns.get(n)]
        if lab_failed:
            problems.append(
                Problem(
                    f"DNS: cannot resolve lab host(s) {', '.join(lab_failed)} "
                    f"({result.dns[lab_failed[0]][:80]})",
                    field=result.host,
                    fix=f"podman's DNS (aardvark-dns) must answer on the gateway of {network}: "
                    f"`podman network inspect {network}` must say dns_enabled true; "
                    "`opsledger lab down && opsledger lab up` recreates the network",
                )
            )
        if result.dns.get(mirror_host):
            problems.append(
                Problem(
                    f"DNS: cannot resolve the Debian mirror {mirror_host} "
                    f"({result.dns[mirror_host][:80]})",
                    field=result.host,
                    fix="aardvark-dns forwards to this machine's resolvers: check that "
                    f"`getent hosts {mirror_host}` works here, or set OPSLEDGER_DEBIAN_MIRROR",
                )
            )
        elif result.mirror:
            problems.append(
                Problem(
                    f"route: the Debian mirror {mirror} did not answer over HTTP "
                    f"({result.mirror[:80]})",
                    field=result.host,
                    fix="containers reach the mirror through podman's NAT: check "
                    "`sysctl net.ipv4.ip_forward` is 1 and `iptables -t nat -S` has netavark's "
                    "rules, or set OPSLEDGER_DEBIAN_MIRROR to a mirror you can reach",
                )
            )
    return problems


def probe_hosts(
    containers: dict[str, str], *, names: Sequence[str], release_url: str, cache_url: str
) -> list[HostNetwork]:
    """Run the probe in every container (host name -> container) in parallel."""

    def one(item: tuple[str, str]) -> HostNetwork:
        host, container = item
        proc = podman(
            "exec",
            container,
            "timeout",
            str(CHECK_TIMEOUT),
            "python3",
            "-c",
            PROBE,
            ",".join(names),
            release_url,
            cache_url,
            check=False,
            timeout=CHECK_TIMEOUT + 15,
        )
        return parse_probe(host, proc.returncode, proc.stdout, proc.stderr)

    if not containers:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(containers))) as pool:
        return list(pool.map(one, sorted(containers.items())))
