"""The emulated-hosts helper's pure parts (the namespaces themselves: test_multihost.py)."""
import xml.etree.ElementTree as ET

import pytest

from rosutil import REPO

from dff_ros.netns import (BURST_DATAGRAMS, DATAGRAM_BYTES, PACED_SHARE, VirtualHosts, host_pacing,
                           paced_bytes_per_second, pacing, rate_bits, readers_per_sample, tbf_args,
                           with_flow_controller)

NS = {"d": "http://www.eprosima.com"}


def test_rates_and_tbf():
    assert rate_bits("20mbit") == 20e6 and rate_bits("1.5gbit") == 1.5e9 and rate_bits("800kbit") == 800e3
    for bad in ("20", "20mb", "fast", "-1mbit"):
        with pytest.raises(ValueError, match="rate"):
            rate_bits(bad)
    args = tbf_args("20mbit")
    assert args[:3] == ["tbf", "rate", "20mbit"] and int(args[args.index("burst") + 1]) == 32 * 1024
    assert int(tbf_args("1gbit")[4]) == 1_250_000          # 10 ms at the rate once that exceeds 32 kB


def test_host_names_and_addresses_are_checked():
    hosts = VirtualHosts(3, prefix="ab1", subnet="10.9.0")
    assert [hosts.name(i) for i in range(3)] == ["ab10", "ab11", "ab12"]
    assert hosts.address(2) == "10.9.0.3" and hosts.bridge == "br-ab1"
    for kwargs in ({"prefix": "../x"}, {"prefix": "A"}, {"subnet": "10.9"}, {"rate": "lots"}):
        with pytest.raises(ValueError):
            VirtualHosts(2, **kwargs)
    with pytest.raises(ValueError, match="count"):
        VirtualHosts(0)


@pytest.mark.parametrize("rate", [1e3, 2e5, 2e6, 1e7, 1e8, 1.25e9])
def test_a_flow_controller_budget_is_whole_datagrams_at_or_below_the_rate(rate):
    budget, period_ms = pacing(rate)
    assert budget % DATAGRAM_BYTES == 0 and budget >= 4 * DATAGRAM_BYTES and period_ms >= 10
    paced = budget * 1000 / period_ms
    assert 0.9 * rate <= paced <= rate or (period_ms > 1000 and paced <= rate), (budget, period_ms, paced)


@pytest.mark.parametrize("servers", [2, 3, 4, 8])
def test_the_unicast_copies_of_every_sample_together_stay_below_the_cap(servers):
    # the flow controller counts a sample once for all its readers: a PFF version goes to every
    # other server, a DFF activity to one node
    assert readers_per_sample("activations", servers) == 1
    k = readers_per_sample("parameters", servers)
    assert k == servers - 1
    cap = rate_bits("20mbit") / 8
    assert PACED_SHARE * cap * 0.9 <= k * paced_bytes_per_second("20mbit", k) <= PACED_SHARE * cap * (1 + 1e-9)
    # and a period's burst, all copies together, is what one reader alone would get (or one
    # datagram to each, past BURST_DATAGRAMS readers)
    budget, _ = host_pacing("20mbit", k)
    assert budget >= DATAGRAM_BYTES and k * budget <= max(BURST_DATAGRAMS, k) * DATAGRAM_BYTES


def test_a_flow_controller_needs_a_positive_rate():
    with pytest.raises(ValueError, match="bytes_per_second"):
        pacing(0)


def test_flow_controller_paces_every_writer_of_the_udp_profile():
    base = (REPO / "config" / "fastdds_udp_profile.xml").read_text()
    root = ET.fromstring(with_flow_controller(base, *pacing(2_000_000)))
    rtps = root.find("d:profiles/d:participant/d:rtps", NS)
    desc = rtps.find("d:flow_controller_descriptor_list/d:flow_controller_descriptor", NS)
    assert desc.find("d:max_bytes_per_period", NS).text == str(4 * DATAGRAM_BYTES)   # whole datagrams
    assert desc.find("d:period_ms", NS).text == "131"                               # 262 kB / 2 MB/s
    assert list(rtps)[0].tag.endswith("flow_controller_descriptor_list")  # before the transports
    writer = root.find("d:profiles/d:data_writer", NS)
    assert writer.get("is_default_profile") == "true"
    mode = writer.find("d:qos/d:publishMode", NS)
    assert mode.find("d:kind", NS).text == "ASYNCHRONOUS"
    assert mode.find("d:flow_controller_name", NS).text == desc.find("d:name", NS).text
    # the transports stay: UDP only
    assert [t.text for t in rtps.findall("d:userTransports/d:transport_id", NS)] == ["dff_udp"]
    # but the heartbeats' writer (the profile named after its topic) does not queue behind chunks
    beat = [w for w in root.findall("d:profiles/d:data_writer", NS) if w.get("profile_name") == "/dff/status"]
    assert len(beat) == 1 and beat[0].find("d:qos/d:publishMode/d:kind", NS).text == "SYNCHRONOUS"
