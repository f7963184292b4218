"""hccn.conf parsing and device IP discovery through a caller-supplied reader."""
from functools import partial

import pytest

from launcher.errors import ClusterFileError
from launcher.hccn import discover_device_ips, needs_discovery, parse_hccn_conf
from tests.harness.specs import spec_of

# An Atlas 800 /etc/hccn.conf as shipped (8 devices, address_N and netmask_N lines).
REFERENCE = "".join(f"address_{d}=192.168.{10 * (d % 4 + 1)}.{21 + d // 4}\nnetmask_{d}=255.255.255.0\n"
                    for d in range(8))
EIGHT = {0: "192.168.10.21", 1: "192.168.20.21", 2: "192.168.30.21", 3: "192.168.40.21",
         4: "192.168.10.22", 5: "192.168.20.22", 6: "192.168.30.22", 7: "192.168.40.22"}
REAL_LIFE = """# comment
address_0=192.168.100.101
netmask_0=255.255.255.0
netdetect_0=192.168.100.1
gateway_0=192.168.100.1
send_arp_status_0=1
tls_enable_0=0
 address_1 = 192.168.101.101

bogus line without equals
address_x=1.2.3.4
"""

#: Ascend hosts given by each test, rank tables, no master or job section.
spec = partial(spec_of, backend="rank_table", device="ascend", port=None, job=None, source="c.yaml")


def test_reference_file():
    assert parse_hccn_conf(REFERENCE, "hccn.conf") == EIGHT


def test_unknown_keys_are_ignored():
    assert parse_hccn_conf(REAL_LIFE, "f") == {0: "192.168.100.101", 1: "192.168.101.101"}


def test_bad_lines_name_file_and_line():
    with pytest.raises(ClusterFileError, match=r"hccn.conf on a: line 2: address_1='300.1.1.1'"):
        parse_hccn_conf("address_0=1.1.1.1\naddress_1=300.1.1.1\n", "hccn.conf on a")
    with pytest.raises(ClusterFileError, match="given twice"):
        parse_hccn_conf("address_0=1.1.1.1\naddress_0=1.1.1.2\n", "f")


def test_discovery_reads_each_host_through_the_reader():
    s = spec(hosts=[{"name": "a", "address": "10.0.0.1", "devices": [0, 1]},
              {"name": "b", "address": "10.0.0.2", "devices": [1], "hccn_conf": "/opt/hccn.conf"},
              {"name": "c", "address": "10.0.0.3", "devices": [0], "device_ips": ["9.9.9.9"]}])
    calls = []

    def read(host, path):
        calls.append((host.name, path))
        return f"address_0=10.1.0.{host.address[-1]}\naddress_1=10.1.1.{host.address[-1]}\n"

    assert needs_discovery(s)
    assert discover_device_ips(s, read) == {"a": {0: "10.1.0.1", 1: "10.1.1.1"}, "b": {1: "10.1.1.2"}}
    assert calls == [("a", "/etc/hccn.conf"), ("b", "/opt/hccn.conf")]


def test_a_device_without_an_address_names_host_device_and_file():
    s = spec(hosts=[{"name": "a", "address": "10.0.0.1", "devices": [0, 5]}])
    with pytest.raises(ClusterFileError) as info:
        discover_device_ips(s, lambda h, p: "address_0=1.1.1.1\n")
    assert info.value.field == "hosts[0].hccn_conf"
    message = str(info.value)
    assert "host a" in message and "device 5" in message and "/etc/hccn.conf" in message


def test_unreadable_file():
    s = spec(hosts=[{"name": "a", "address": "10.0.0.1", "devices": [0]}])

    def read(host, path):
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(ClusterFileError, match="cannot read /etc/hccn.conf on host a"):
        discover_device_ips(s, read)


def test_no_discovery_without_a_rank_table():
    s = spec(hosts=[{"name": "a", "address": "10.0.0.1", "devices": [0]}], backend="mpirun")
    assert not needs_discovery(s)
    assert discover_device_ips(s, lambda h, p: pytest.fail("must not read")) == {}
