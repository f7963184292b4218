"""The cluster view from recorded `glance` answers (tests/fixtures/glance, real answers of the host program):
per device its verdict and holder, slots and their holders, the queue, cordon and cooldown, problems; the
text blocks and the JSON."""
import json
import time
from pathlib import Path

import pytest

from launcher.health.verdicts import Verdict
from launcher.sharing.hostview import HOST, SPARE, ClusterView, host_view, unreachable_view
from launcher.sharing.render import age, describe_cordon, ranges, render
from tests.harness.specs import spec_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "glance"


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Times render in the local zone: fix it."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def answer(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())["answer"]


def hhmmss(t):
    return time.strftime("%H:%M:%S", time.gmtime(t))


def cpu_spec(slots=4, **top):
    host = {"name": "cpu-a", "address": "10.0.0.21", "ssh": {}, "workdir": "/w", "ranks": 2}
    if slots is not None:
        host["slots"] = slots
    return spec_of(hosts=[host], spares=[{"name": "cpu-s", "address": "10.0.0.29", "ssh": {}, "workdir": "/w",
                                          "ranks": 2}], **top)


def npu_spec(check_devices=True):
    return spec_of(backend="rank_table", device="ascend",
                   hosts=[{"name": "npu-a", "address": "10.0.0.1", "ssh": {}, "workdir": "/w",
                           "devices": [4, 5, 6, 7], "device_ips": [f"1.1.1.{d}" for d in range(4, 8)]}],
                   health={"check_devices": check_devices})


def view_of(spec, *hosts):
    return ClusterView(spec.name, spec.source, 1.0e9, tuple(hosts))


def test_cpu_host_with_slots_shows_its_holders_and_the_queue_in_order():
    spec, data = cpu_spec(), answer("cpu_busy")
    host = host_view(spec, spec.hosts[0], HOST, data)
    assert host.status == "in use" and host.ok
    assert (host.slots.total, host.slots.used) == (4, 2)
    [holder] = host.slots.holders
    assert (holder.job, holder.user, holder.slots, holder.launcher, holder.launcher_pid) == (
        "seg-a", "root", 2, "laptop", 4242)
    assert [(t.job, t.slots) for t in host.queue] == [("seg-b", 3)]
    assert host.devices == () and host.cooldown is None and not host.cordoned
    assert [d.what for d in host.disks] == ["state dir", "workdir"]
    assert all(d.free_bytes > 0 for d in host.disks)

    text = render(view_of(spec, host)).splitlines()
    lease = data["snapshot"]["leases"][0]
    assert text[2] == "cpu-a (10.0.0.21)  host  in use"
    assert text[3].startswith("  load ") and "GB free | disk free: state dir " in text[3]
    assert text[4] == (f"  slots 2 of 4 used: job seg-a of root (2) since {hhmmss(lease['since'])} (0s ago), "
                       f"launched from laptop pid 4242")
    assert text[5].startswith("  queue: 1. job seg-b of root (3 slots) waiting since ")
    assert text[-1] == "hosts: 1 in use"


def test_cordoned_host_with_exclusions_shows_who_why_and_the_cooldown():
    spec, data = cpu_spec(), answer("cpu_cordoned")
    host = host_view(spec, spec.hosts[0], HOST, data)
    assert host.status == "cordoned" and host.ok
    assert (host.cordon["by"], host.cordon["why"]) == ("root", "memory errors, DIMM replacement on Tuesday")
    assert [r["job"] for r in host.exclusions] == ["seg-c", "seg-d"]
    cool = host.cooldown
    last = data["snapshot"]["exclusions"][-1]["time"]
    # two exclusions in the window: 600 s doubled, counted from the last one, on the host's clock
    assert cool.active and cool.until == pytest.approx(last + 1200)
    assert cool.recent == 2 and not cool.cordon_due
    text = render(view_of(spec, host))
    since = hhmmss(data["snapshot"]["cordon"]["since"])
    assert f"cordoned by root since {since} (0s ago): memory errors" in text
    assert "cooling down: excluded 2 times (last: job seg-d: rank 2 hung: no output for 600 s); no new job " \
           f"until {hhmmss(last + 1200)} (20m left)" in text
    assert "job seg-c (by root): rank 3 exited with code 1 (ECC error)" in text
    assert "slots 0 of 4 used" in text


def test_a_third_exclusion_would_cordon_and_the_settings_come_from_the_file():
    spec = cpu_spec(sharing={"cordon_after": 2, "cooldown_s": 60})
    host = host_view(spec, spec.hosts[0], HOST, answer("cpu_cordoned"))
    assert host.cooldown.cordon_due
    last = answer("cpu_cordoned")["snapshot"]["exclusions"][-1]["time"]
    assert host.cooldown.until == pytest.approx(last + 120)


def test_ascend_host_compacts_its_devices_by_holder_and_by_health():
    spec, data = npu_spec(), answer("ascend_busy")
    host = host_view(spec, spec.hosts[0], HOST, data)
    assert [(d.device, d.verdict, d.holder.job if d.holder else None) for d in host.devices] == [
        (4, Verdict.HEALTHY, "seg-a"), (5, Verdict.HEALTHY, "seg-a"), (6, Verdict.UNHEALTHY, None),
        (7, Verdict.HEALTHY, None)]
    assert host.devices[2].reasons == ("health Alarm",)
    assert host.status == "unhealthy" and not host.ok
    assert [t.devices for t in host.queue] == [(4, 5, 6, 7)]
    view = view_of(spec, host)
    assert view.exit_code == 1
    lines = render(view).splitlines()
    since = hhmmss(data["snapshot"]["leases"][0]["since"])
    assert f"  devices 4,5 job seg-a of root since {since} (0s ago), launched from laptop pid 4242 | " \
           "6,7 free" in lines
    assert "  health 4,5,7 HEALTHY | 6 UNHEALTHY (health Alarm)" in lines
    assert any(line.startswith("  queue: 1. job seg-b of root (devices 4-7) waiting since") for line in lines)


def test_devices_not_probed_show_their_holders_only():
    spec = npu_spec(check_devices=False)
    data = dict(answer("ascend_busy"), tool=None)
    host = host_view(spec, spec.hosts[0], HOST, data)
    assert [d.verdict for d in host.devices] == [None] * 4 and host.ok
    assert not any(line.startswith("  health") for line in render(view_of(spec, host)).splitlines())


def test_tool_problems_make_the_host_unhealthy():
    spec = npu_spec()
    missing = dict(answer("ascend_busy"), tool={"argv": ["npu-smi", "info"], "found": False})
    host = host_view(spec, spec.hosts[0], HOST, missing)
    assert host.problems == ("npu-smi: tool not found on the host",) and host.status == "unhealthy"
    failed = dict(answer("ascend_busy"), tool={"argv": ["npu-smi", "info"], "found": True, "code": 3,
                                                "stdout": "", "stderr": "dcmi error -8005\n"})
    host = host_view(spec, spec.hosts[0], HOST, failed)
    assert host.problems == ("npu-smi info failed (exit 3): dcmi error -8005",)
    garbled = dict(answer("ascend_busy"), tool={"argv": ["npu-smi", "info"], "found": True, "code": 0,
                                                 "stdout": "no table here\n", "stderr": ""})
    assert host_view(spec, spec.hosts[0], HOST, garbled).problems


def test_unreadable_state_names_the_file_and_leaves_holders_unknown():
    spec, data = cpu_spec(), answer("state_error")
    host = host_view(spec, spec.hosts[0], HOST, data)
    path = data["state_error"]["path"]
    assert host.state_error.startswith(path) and host.status == "unhealthy" and host.slots is None
    assert f"  problem: shared state: {path}: not a valid state record" in render(view_of(spec, host))


def test_unreachable_hosts_and_spares_fail_the_view():
    spec = cpu_spec()
    host = host_view(spec, spec.hosts[0], HOST, answer("cpu_busy"))
    refused = "connection refused by 10.0.0.29:22 (is sshd running there?)"
    spare = unreachable_view(spec.spares[0], SPARE, refused)
    view = view_of(spec, host, spare)
    assert (spare.status, view.ok, view.exit_code) == ("unreachable", False, 1)
    text = render(view)
    assert "cpu-s (10.0.0.29)  spare  unreachable\n  connection refused by 10.0.0.29:22" in text
    assert text.splitlines()[0].endswith(": 1 host, 1 spare, at 2001-09-09 01:46:40")
    assert text.splitlines()[-1] == "hosts: 1 in use, 1 unreachable"


def test_a_cpu_host_without_slots_says_why_it_shows_no_lease():
    spec = cpu_spec(slots=None)
    host = host_view(spec, spec.hosts[0], HOST, answer("cpu_busy"))
    assert host.lease_note.startswith("no `slots` in the cluster file")
    assert (host.slots.total, host.slots.used) == (None, 2)
    text = render(view_of(spec, host))
    assert "  leases: job seg-a of root (2 slots) since" in text and "(no `slots` in the cluster file" in text
    off = cpu_spec(sharing={"leases": False})
    note = host_view(off, off.hosts[0], HOST, answer("cpu_busy")).lease_note
    assert note.startswith("sharing.leases is off")


def test_json_holds_everything_the_text_shows():
    spec = npu_spec()
    data = answer("ascend_busy")
    view = view_of(spec, host_view(spec, spec.hosts[0], HOST, data),
                   unreachable_view(spec.hosts[0], SPARE, "no route"))
    doc = json.loads(json.dumps(view.to_dict()))
    assert (doc["cluster"], doc["ok"]) == ("t", False)
    host, down = doc["hosts"]
    assert (host["status"], host["ok"], host["cordoned"], host["role"]) == ("unhealthy", False, False, "host")
    assert [(d["device"], d["verdict"], (d["holder"] or {}).get("job")) for d in host["devices"]] == [
        (4, "HEALTHY", "seg-a"), (5, "HEALTHY", "seg-a"), (6, "UNHEALTHY", None), (7, "HEALTHY", None)]
    assert host["devices"][2]["reasons"] == ["health Alarm"]
    assert host["devices"][0]["reading"]["memory_total_mb"] == 32768  # HBM where the chip reports it
    assert [t["job"] for t in host["queue"]] == ["seg-b"]
    assert host["clock"] == data["snapshot"]["now"]
    assert host["state_dir"] == data["snapshot"]["state_dir"]["path"]
    assert (down["status"], down["unreachable"]) == ("unreachable", "no route")


def test_helpers():
    assert ranges([7, 0, 1, 2, 3, 5]) == "0-3,5,7"
    assert ranges([4, 5]) == "4,5" and ranges([]) == ""
    assert [age(s) for s in (0, 59, 61, 3599, 3661, 90000)] == ["0s", "59s", "1m", "59m", "1h01m", "1d01h"]
    assert describe_cordon({"cordoned": False}, 0) == "not cordoned"
    assert describe_cordon({"cordoned": True, "by": "bob", "since": 100.0, "why": "fan"}, 160.0) == \
        "cordoned by bob since 00:01:40 (1m ago): fan"


def test_several_holders_and_waiters_take_a_line_each():
    spec, data = cpu_spec(), json.loads(json.dumps(answer("cpu_busy")))
    snap = data["snapshot"]
    carol = dict(job="seg-c", user="carol", launcher="ws-7", launcher_pid=880)
    snap["leases"].append(dict(snap["leases"][0], **carol))
    snap["queue"].append(dict(snap["queue"][0], job="seg-d", user="dave", slots=1))
    host = host_view(spec, spec.hosts[0], HOST, data)
    assert (host.slots.used, [h.job for h in host.slots.holders]) == (4, ["seg-a", "seg-c"])
    lines = render(view_of(spec, host)).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  slots 4 of 4 used: job seg-a of root"))
    assert lines[at].endswith("launched from laptop pid 4242;")
    assert lines[at + 1].startswith("    job seg-c of carol (2) since ")
    assert lines[at + 1].endswith("ws-7 pid 880")
    assert lines[at + 2].startswith("  queue: 1. job seg-b of root (3 slots) waiting since ")
    assert lines[at + 3].startswith("    2. job seg-d of dave (1 slot) waiting since ")
