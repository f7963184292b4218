"""Placement: HCCL server order, node/local ranks, device IPs."""
from functools import partial

import pytest

from launcher.errors import ClusterFileError
from launcher.placement import RankSlot, place
from tests.harness.specs import spec_of

#: Ascend hosts given by each test, rank tables, no master or job section.
spec = partial(spec_of, backend="rank_table", device="ascend", port=None, job=None, source="c.yaml")


def test_servers_in_dictionary_order_of_their_address():
    s = spec(hosts=[
        {"name": "x", "address": "10.0.0.2", "devices": [0, 1], "device_ips": ["2.0.0.0", "2.0.0.1"]},
        {"name": "y", "address": "10.0.0.10", "devices": [4, 6], "device_ips": ["10.0.0.4", "10.0.0.6"]},
        {"name": "z", "address": "10.0.0.1", "devices": [3], "device_ips": ["1.0.0.3"]}])
    assert place(s) == (
        RankSlot(0, 0, 0, "z", 3, "1.0.0.3"),
        RankSlot(1, 1, 0, "y", 4, "10.0.0.4"),
        RankSlot(2, 1, 1, "y", 6, "10.0.0.6"),
        RankSlot(3, 2, 0, "x", 0, "2.0.0.0"),
        RankSlot(4, 2, 1, "x", 1, "2.0.0.1"),
    )


def test_discovered_ips_are_keyed_by_physical_device_id():
    s = spec(hosts=[{"name": "a", "address": "h", "devices": [7, 2]}])
    slots = place(s, {"a": {2: "1.1.1.2", 7: "1.1.1.7", 9: "1.1.1.9"}})
    assert [(x.device_id, x.device_ip, x.local_rank) for x in slots] == [(7, "1.1.1.7", 0), (2, "1.1.1.2", 1)]


def test_missing_ip_is_an_error_naming_host_and_device():
    s = spec(hosts=[{"name": "a", "address": "h", "devices": [0, 1]}])
    with pytest.raises(ClusterFileError, match="host a: no device IP for device 1"):
        place(s, {"a": {0: "1.1.1.1"}})


def test_no_ips_needed_without_rank_table():
    s = spec(hosts=[{"name": "b", "address": "h2", "devices": [0, 1]},
              {"name": "a", "address": "h1", "devices": [0, 1]}], backend="mpirun", device="gpu")
    assert [(x.rank, x.node_rank, x.host, x.device_ip) for x in place(s)] == [
        (0, 0, "a", None), (1, 0, "a", None), (2, 1, "b", None), (3, 1, "b", None)]


def test_cpu_ranks_and_shared_addresses():
    s = spec(hosts=[{"name": "b", "ranks": 2}, {"name": "a", "ranks": 1}], backend="dynamic", device="cpu")
    assert [(x.rank, x.node_rank, x.local_rank, x.host, x.device_id) for x in place(s)] == [
        (0, 0, 0, "a", 0), (1, 1, 0, "b", 0), (2, 1, 1, "b", 1)]
