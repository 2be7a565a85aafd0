"""network verified on real hosts: the live nftables ruleset, resolvers and hosts entries."""

from __future__ import annotations

import json

import pytest

SUITE = "network"
APPLIES_TO = "all"


def rules(t) -> list[dict]:
    """The merged rule layers, in the order the role merges them."""
    layered = [k for k in t.expect if k.startswith("network_firewall_rules__")]
    merged = (
        t.expect["network_firewall_rules"]
        + t.expect["network_firewall_group_rules"]
        + t.expect["network_firewall_host_rules"]
    )
    for key in sorted(layered):
        merged += t.expect[key]
    return merged


PARAMS = {
    "rule": rules,
    "dns_server": lambda t: t.expect["network_dns_servers"],
    "dns_check_name": lambda t: (
        t.expect["network_dns_check_names"] if t.expect["network_dns_enabled"] else []
    ),
    "hosts_entry": lambda t: t.expect["network_hosts_entries"],
}


@pytest.fixture
def input_chain(host):
    """The live input chain as JSON statements: what the kernel enforces right now."""
    out = host.check_output("nft -j list chain inet opsledger input")
    items = json.loads(out)["nftables"]
    chain = next(i["chain"] for i in items if "chain" in i)
    return chain, [i["rule"] for i in items if "rule" in i]


def _accept_rule(rule_json: dict) -> tuple[str, str, str, tuple[str, ...]] | None:
    """(name, proto, port, sources) of an accept rule matching a destination port, else None."""
    proto = port = None
    sources: tuple[str, ...] = ()
    for stmt in rule_json["expr"]:
        match = stmt.get("match")
        if not match:
            continue
        left = match["left"].get("payload", {})
        right = match["right"]
        if left.get("field") == "dport":
            proto = left["protocol"]
            ranged = isinstance(right, dict) and "range" in right
            port = f"{right['range'][0]}-{right['range'][1]}" if ranged else str(right)
        elif left.get("field") == "saddr":
            values = right["set"] if isinstance(right, dict) and "set" in right else [right]
            sources = tuple(
                f"{v['prefix']['addr']}/{v['prefix']['len']}" if isinstance(v, dict) else v
                for v in values
            )
    if proto and any("accept" in stmt for stmt in rule_json["expr"]):
        return rule_json.get("comment", ""), proto, port, sources
    return None


def _live_rules(rules_json: list[dict]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """Accept rules keyed by their comment (the inventory rule's name).

    One inventory rule with IPv4 and IPv6 sources is two nft rules (ip and ip6 saddr):
    their sources are merged back into one entry.
    """
    merged: dict[tuple[str, str, str], set[str]] = {}
    for rule in filter(None, map(_accept_rule, rules_json)):
        merged.setdefault(rule[:3], set()).update(rule[3])
    return {(*key, tuple(sorted(sources))) for key, sources in merged.items()}


def _wanted(rule: dict) -> tuple[str, str, str, tuple[str, ...]]:
    sources = tuple(sorted(str(s) for s in rule.get("sources", [])))
    return rule["name"], rule.get("proto", "tcp"), str(rule["port"]), sources


def test_nftables_running_default_deny_net_fw_01(host, input_chain):
    assert host.service("nftables").is_enabled
    chain, _ = input_chain
    assert chain["policy"] == "drop"


def test_ssh_always_open_net_fw_02(host, expect, input_chain):
    _, rules_json = input_chain
    accepted = {rule[1:3] for rule in _live_rules(rules_json)}
    assert ("tcp", str(expect["network_firewall_ssh_port"])) in accepted
    # And it really is reachable: this very test reached the host over SSH through it.
    assert host.run("true").rc == 0


def test_rule_is_enforced_net_fw_03(rule, input_chain):
    _, rules_json = input_chain
    assert _wanted(rule) in _live_rules(rules_json)


def test_no_port_open_beyond_the_rules_net_fw_03(target, input_chain):
    _, rules_json = input_chain
    live = {r for r in _live_rules(rules_json) if r[0] != "ssh"}
    assert live == {_wanted(r) for r in rules(target)}, "ports open that no inventory rule allows"


def test_resolver_configured_net_dns_01(host, dns_server, skip_if_waived):
    skip_if_waived("NET-DNS-01")
    assert f"nameserver {dns_server}" in host.file("/etc/resolv.conf").content_string.splitlines()


def test_resolver_list_is_exactly_the_inventory_net_dns_01(host, expect, skip_if_waived):
    skip_if_waived("NET-DNS-01")
    lines = host.file("/etc/resolv.conf").content_string.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("nameserver ")] == expect[
        "network_dns_servers"
    ]


def test_resolvers_answer_check_name_net_dns_02(host, dns_check_name, skip_if_waived):
    skip_if_waived("NET-DNS-02")
    assert host.run(f"getent ahosts {dns_check_name}").rc == 0, f"{dns_check_name} does not resolve"


def test_hosts_entry_resolves_net_hosts_01(host, hosts_entry):
    for name in hosts_entry["names"]:
        assert host.check_output(f"getent hosts {name}").split()[0] == hosts_entry["ip"]
