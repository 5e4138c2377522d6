"""Several "robots" on one Linux machine: network namespaces on a bridge, one IP each, with
optional bandwidth caps (tc tbf), so master and servers run as a real multi-host setup.

    sudo python -m dff_ros.netns up 3 --rate 20mbit      # hosts dffh0..dffh2, 10.77.0.1..3
    sudo ip netns exec dffh1 bash -c '. scripts/env.sh && ros2 run dff_ros server'
    sudo python -m dff_ros.netns down 3

Each namespace gets a veth pair into the bridge and a multicast route, so DDS discovery works
as on a LAN. A cap shapes every host's egress, so every link between two hosts is capped in both
directions (WiFi between SBCs). Processes in the namespaces should use the UDP-only Fast DDS
profile (``config/fastdds_udp_profile.xml``): data then crosses the emulated network, never
shared memory.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dff_ros.topics import STATUS_TOPIC

RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit)$")
NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ip/tc, or the kernel refuses)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def rate_bits(rate: str) -> float:
    """'20mbit' -> 20e6 bits per second."""
    m = RATE.match(rate)
    if not m:
        raise ValueError(f"rate {rate!r}: expected a number and bit|kbit|mbit|gbit, e.g. 20mbit")
    unit = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[m.group(2)]
    return float(rate[: -len(m.group(2))]) * unit


def tbf_args(rate: str) -> list[str]:
    """tc tbf for a host's egress: a burst of ~10 ms at the rate (at least 32 kB, so a full-size
    UDP datagram's fragments pass) and up to 200 ms of queue before packets are dropped."""
    bits = rate_bits(rate)
    burst = max(32 * 1024, int(bits / 8 / 100))
    return ["tbf", "rate", rate, "burst", str(burst), "latency", "200ms"]


DATAGRAM_BYTES = 65500   # Fast DDS's largest UDP message: a big sample goes as fragments of this size
BURST_DATAGRAMS = 4   # what a host sends back to back per period, all copies together: 262 kB,
# about half of tbf's 200 ms queue at 20 Mbit/s


def pacing(bytes_per_second: float, datagrams: int = BURST_DATAGRAMS, shortest_ms: int = 10) -> tuple[int, int]:
    """(max_bytes_per_period, period_ms) for a flow controller that sends ``bytes_per_second``
    or a little less. The budget is whole datagrams: the controller sends a fragment only if
    all of it fits what is left of the period, so 100 kB per period passed one 65.5 kB
    fragment and wasted the rest (1.3 of 2 MB/s, measured at 20 Mbit/s). At least
    ``datagrams`` a period, and periods of at least ``shortest_ms``."""
    if bytes_per_second <= 0:
        raise ValueError(f"bytes_per_second must be > 0, got {bytes_per_second}")
    n = max(datagrams, math.ceil(bytes_per_second * shortest_ms / 1000 / DATAGRAM_BYTES))
    budget = n * DATAGRAM_BYTES
    return budget, max(1, math.ceil(budget * 1000 / bytes_per_second))   # rounded up: never faster


PACED_SHARE = 0.8   # of a capped link, for the data writers; the rest: heartbeats, ACKs, discovery


def readers_per_sample(transport: str, servers: int) -> int:
    """How many other hosts one data sample goes to: a DFF activity to the next layer's node, a
    PFF version to every other server (each listens to every part's topic, ``PFFPlan.received_by``)."""
    return max(1, servers - 1) if transport == "parameters" else 1


def host_pacing(rate: str, readers: int = 1) -> tuple[int, int]:
    """(max_bytes_per_period, period_ms) for the flow controller of a host with egress cap
    ``rate`` whose samples each go to ``readers`` other hosts. Fast DDS's controller counts a
    sample once however many readers' addresses it goes to (RTPSMessageGroup adds a message's
    length once per send), so the budget is ``PACED_SHARE`` of the cap / readers, and a period's
    burst of datagrams is split between the copies: 4 datagrams a period sent to 3 readers put
    786 kB at once into a 500 kB queue, and the drops waited for the writers' repairs (4 hosts
    at 20 Mbit/s: 41 s per 9.4 MB version, 14 s expected)."""
    return pacing(PACED_SHARE * rate_bits(rate) / 8 / readers, datagrams=max(1, BURST_DATAGRAMS // readers))


def paced_bytes_per_second(rate: str, readers: int = 1) -> float:
    """What that controller lets a host's data writers send, each sample counted once."""
    budget, period_ms = host_pacing(rate, readers)
    return budget * 1000 / period_ms


def with_flow_controller(profile_xml: str, budget: int, period_ms: int) -> str:
    """A Fast DDS profile (XML text) whose participants send at most ``budget`` bytes per
    ``period_ms``: a FIFO flow controller used by every data writer (asynchronous publishing),
    its budget whole datagrams (``pacing``, ``host_pacing``). Without one, reliable messages of
    many fragments overrun a capped link, the drops are resent at full speed and nothing gets
    through (seen here at 20 Mbit/s: 760 MB sent for 11 MB delivered)."""
    import xml.etree.ElementTree as ET

    ns = "http://www.eprosima.com"
    ET.register_namespace("", ns)
    q = lambda tag: f"{{{ns}}}{tag}"  # noqa: E731
    root = ET.fromstring(profile_xml)
    profiles = root.find(q("profiles"))
    rtps = profiles.find(f"{q('participant')}/{q('rtps')}")
    if profiles is None or rtps is None:
        raise ValueError("the profile has no <profiles><participant><rtps>")
    controllers = ET.Element(q("flow_controller_descriptor_list"))
    desc = ET.SubElement(controllers, q("flow_controller_descriptor"))
    for tag, text in (("name", "dff_link"), ("scheduler", "FIFO"), ("max_bytes_per_period", str(budget)),
                      ("period_ms", str(period_ms))):
        ET.SubElement(desc, q(tag)).text = text
    rtps.insert(0, controllers)   # the schema wants it before the transports
    writer = ET.SubElement(profiles, q("data_writer"), profile_name="dff_writer", is_default_profile="true")
    mode = ET.SubElement(ET.SubElement(writer, q("qos")), q("publishMode"))
    ET.SubElement(mode, q("kind")).text = "ASYNCHRONOUS"
    ET.SubElement(mode, q("flow_controller_name")).text = "dff_link"
    # heartbeats go around the controller: queued behind megabytes of chunks, they arrived
    # too late and a live server was declared lost (rmw_fastrtps takes the profile named after
    # the topic); they are small, and the cap leaves them the 20 % the controller does not use
    beat = ET.SubElement(profiles, q("data_writer"), profile_name=STATUS_TOPIC)
    ET.SubElement(ET.SubElement(ET.SubElement(beat, q("qos")), q("publishMode")), q("kind")).text = "SYNCHRONOUS"
    return ET.tostring(root, encoding="unicode")


@dataclass
class VirtualHosts:
    """Emulated hosts on this machine: network namespaces on a bridge, one IP each, optional capped
    links."""
    count: int
    prefix: str = "dffh"
    subnet: str = "10.77.0"      # host i is <subnet>.<i+1>; the bridge <subnet>.254
    rate: str | None = None      # egress cap per host, e.g. "20mbit"

    def __post_init__(self):
        if not 1 <= self.count <= 200:
            raise ValueError(f"count must be 1..200, got {self.count}")
        if not NAME.match(self.prefix):
            raise ValueError(f"prefix {self.prefix!r}: 1-8 lowercase letters/digits, starting with a letter")
        if not re.match(r"^\d{1,3}\.\d{1,3}\.\d{1,3}$", self.subnet):
            raise ValueError(f"subnet {self.subnet!r}: expected three octets, e.g. 10.77.0")
        if self.rate is not None:
            rate_bits(self.rate)

    @property
    def bridge(self) -> str:
        return f"br-{self.prefix}"

    def name(self, i: int) -> str:
        return f"{self.prefix}{i}"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{i + 1}"

    @staticmethod
    def check_available() -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root (run as root or with CAP_NET_ADMIN)")
        for tool in ("ip", "tc"):
            if subprocess.run(["which", tool], capture_output=True).returncode:
                raise NetnsUnavailable(f"{tool} (iproute2) is not installed")

    def up(self) -> "VirtualHosts":
        self.check_available()
        self.down()   # leftovers of a killed run
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            snooping = Path(f"/sys/class/net/{self.bridge}/bridge/multicast_snooping")
            if snooping.exists():   # flood multicast: DDS discovery must reach every host
                snooping.write_text("0")
            for i in range(self.count):
                ns, veth = self.name(i), f"v-{self.name(i)}"
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
                if self.rate:
                    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root",
                                    *tbf_args(self.rate)], capture_output=True, text=True, check=True)
        except subprocess.CalledProcessError as e:
            self.down()
            raise NetnsUnavailable(f"{' '.join(e.cmd)}: {e.stderr.strip() or e.returncode}") from None
        return self

    def down(self) -> None:
        for i in range(self.count):
            _ip("netns", "del", self.name(i), check=False)   # removes its veth end, and so the pair
        _ip("link", "del", self.bridge, check=False)

    def sent_bytes(self, i: int) -> int:
        """Bytes host i has sent into the bridge (its veth peer's receive counter)."""
        return int(Path(f"/sys/class/net/v-{self.name(i)}/statistics/rx_bytes").read_text())

    def received_bytes(self, i: int) -> int:
        """Bytes the bridge has passed to host i (its veth peer's transmit counter)."""
        return int(Path(f"/sys/class/net/v-{self.name(i)}/statistics/tx_bytes").read_text())

    def command(self, i: int, args: list[str]) -> list[str]:
        """``args`` run inside host i."""
        return ["ip", "netns", "exec", self.name(i), *args]

    def __enter__(self) -> "VirtualHosts":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


def main(argv=None) -> int:
    a = argparse.ArgumentParser(prog="python -m dff_ros.netns", description=__doc__.split("\n\n")[0])
    a.add_argument("action", choices=("up", "down"))
    a.add_argument("count", type=int)
    a.add_argument("--prefix", default="dffh")
    a.add_argument("--subnet", default="10.77.0")
    a.add_argument("--rate", help="egress cap per host, e.g. 20mbit")
    args = a.parse_args(argv)
    try:
        hosts = VirtualHosts(args.count, args.prefix, args.subnet, args.rate)
        if args.action == "up":
            hosts.up()
            for i in range(hosts.count):
                print(f"{hosts.name(i)} {hosts.address(i)}" + (f" (egress {hosts.rate})" if hosts.rate else ""))
        else:
            hosts.down()
    except (ValueError, NetnsUnavailable) as e:
        print(f"netns: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
