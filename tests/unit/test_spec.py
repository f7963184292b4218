"""Cluster file validation: shipped files load, every error names its field path."""
import dataclasses
import sys
from pathlib import Path

import pytest
import yaml

from launcher.errors import ClusterFileError
from launcher.resources import cluster_configs_dir
from launcher.spec.load import (
    apply_overrides,
    load_cluster,
    parse_cluster,
    parse_override,
    with_max_restarts,
    with_stage_options,
)

SHIPPED = sorted(p.name for p in cluster_configs_dir().glob("*.yaml"))


def base(**top):
    data = {"name": "t", "backend": "dynamic", "device": "cpu", "hosts": [{"ranks": 2}]}
    data.update(top)
    return data


def ascend(hosts=None, **top):
    hosts = hosts or [{"address": "10.0.0.1", "devices": [0, 1]}]
    return base(backend="rank_table", device="ascend", hosts=hosts, **top)


def error(data) -> ClusterFileError:
    with pytest.raises(ClusterFileError) as info:
        parse_cluster(data, "c.yaml")
    return info.value


def test_every_required_file_is_shipped():
    assert set(SHIPPED) >= {"8xascend.yaml", "2x8xascend.yaml", "8xgpu.yaml", "2x8xgpu-msrun.yaml",
                            "local-cpu.yaml", "ssh-cpu.yaml"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_validate(name):
    spec = load_cluster(cluster_configs_dir() / name)
    assert spec.name == Path(name).stem
    assert spec.world_size >= 2


def test_local_host_defaults(tmp_path):
    spec = parse_cluster(base(), "c.yaml", cwd=str(tmp_path))
    (host,) = spec.hosts
    assert (host.name, host.address, host.ssh, host.devices) == ("127.0.0.1", "127.0.0.1", None, (0, 1))
    assert host.python == sys.executable and host.workdir == str(tmp_path)
    assert spec.master.addr == "127.0.0.1" and spec.master.port == "auto" and spec.master.host == "127.0.0.1"
    assert spec.timeouts.cluster_s == 60 and spec.restart.max_restarts == 0 and spec.restart.warm_start
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"
    with pytest.raises(TypeError):
        spec.env["A"] = "1"


def test_ssh_host_fields():
    spec = parse_cluster(base(hosts=[{"name": "a", "address": "h1", "ranks": 1, "workdir": "/w/",
                                      "ssh": {"user": "u", "port": 2222, "key_file": "~/k",
                                              "host_key_policy": "accept-new", "use_agent": False}}]), "c")
    ssh = spec.hosts[0].ssh
    assert (ssh.user, ssh.port, ssh.host_key_policy, ssh.use_agent, ssh.known_hosts) == \
        ("u", 2222, "accept-new", False, None)
    assert ssh.key_file == str(Path("~/k").expanduser()) and spec.hosts[0].workdir == "/w"
    assert spec.hosts[0].python == "python3"


@pytest.mark.parametrize("data, field, words", [
    (base(colour="red"), "colour", "unknown key"),
    (base(hosts=[{"ranks": 1}, {"name": "b", "rank": 1}]), "hosts[1].rank", "unknown key"),
    (base(backend="pbs"), "backend", "not one of"),
    (base(device="tpu"), "device", "not one of"),
    (base(backend="rank_table"), "backend", "ascend"),
    (base(hosts=[]), "hosts", "non-empty"),
    (base(hosts=[{"ranks": 1}, {"ranks": 1}]), "hosts[1].name", "duplicate host"),
    (ascend([{"address": "10.0.0.1", "devices": [0, 1, 2, 1]}]), "hosts[0].devices[3]", "listed twice"),
    (ascend([{"address": "10.0.0.1", "devices": []}]), "hosts[0].devices", "no devices"),
    (ascend([{"address": "10.0.0.1"}]), "hosts[0].devices", "required"),
    (ascend([{"address": "10.0.0.1", "devices": [-1]}]), "hosts[0].devices[0]", "out of range"),
    (ascend([{"address": "10.0.0.1", "devices": [0]}, {"name": "b", "address": "10.0.0.1", "devices": [1]}]),
     "hosts[1].address", "duplicate address"),
    (base(hosts=[{"ranks": 0}]), "hosts[0].ranks", "out of range"),
    (base(hosts=[{"devices": [0]}]), "hosts[0].devices", "ranks: N"),
    (ascend([{"address": "a", "ranks": 2}]), "hosts[0].ranks", "devices"),
    (base(master={"port": 70000}), "master.port", "out of range"),
    (base(master={"port": 0}), "master.port", "out of range"),
    (base(master={"port": "any"}), "master.port", "auto"),
    (base(master={"host": "nope"}), "master.host", "no host named"),
    (base(hosts=[{"ranks": 1, "address": "h", "ssh": {"port": 65536}, "workdir": "/w"}]),
     "hosts[0].ssh.port", "out of range"),
    (base(hosts=[{"ranks": 1, "address": "h", "ssh": {"host_key_policy": "yes"}, "workdir": "/w"}]),
     "hosts[0].ssh.host_key_policy", "not one of"),
    (base(hosts=[{"ranks": 1, "address": "h", "ssh": {}}]), "hosts[0].workdir", "required"),
    (base(hosts=[{"ranks": 1, "address": "h", "ssh": {}, "workdir": "rel"}]), "hosts[0].workdir", "absolute"),
    (base(hosts=[{"ranks": 1, "ssh": {}, "workdir": "/w"}]), "hosts[0].address", "required"),
    (base(hosts=[{"ranks": 1, "name": "a;rm -rf /"}]), "hosts[0].name", "not a host name"),
    (base(hosts=[{"ranks": 1, "address": "$(touch x)"}]), "hosts[0].address", "not a host name"),
    (base(master={"addr": "a b"}), "master.addr", "not a host name"),
    (base(name="bad name"), "name", "not a name"),
    (base(env={"1BAD": "x"}), "env.1BAD", "not a valid environment variable name"),
    (base(env={"A-B": "x"}), "env.A-B", "not a valid environment variable name"),
    (base(env={"RANK_ID": "3"}), "env.RANK_ID", "set by the launcher"),
    (base(env={"A": [1]}), "env.A", "string or number"),
    (base(hosts=[{"ranks": 1, "env": {"X Y": "1"}}]), "hosts[0].env.X Y", "not a valid"),
    (ascend([{"address": "a", "devices": [0, 1], "device_ips": ["1.1.1.1"]}]), "hosts[0].device_ips",
     "one per device"),
    (ascend([{"address": "a", "devices": [0], "device_ips": ["1.1.1"]}]), "hosts[0].device_ips[0]",
     "not an IP"),
    (base(hosts=[{"ranks": 1, "device_ips": ["1.1.1.1"]}]), "hosts[0].device_ips", "only for device ascend"),
    (ascend([{"address": "a", "devices": [0], "hccn_conf": "hccn.conf"}]), "hosts[0].hccn_conf", "absolute"),
    (base(job={"output": "x"}), "job.output", "unknown key"),
    (base(job={"stage_overrides": {"r 3": {}}}), "job.stage_overrides.r 3", "not a stage name"),
    (base(job={"stage_overrides": {"r1": {"crop_size": 1, "crop-size": 2}}}),
     "job.stage_overrides.r1.crop-size", "given twice"),
    (base(job={"stage_overrides": {"r1": {"--x": 1}}}), "job.stage_overrides.r1.--x", "not an option name"),
    (base(job={"stage_overrides": {"r1": {"x": {"a": 1}}}}), "job.stage_overrides.r1.x", "expected a value"),
    (base(job={"extra_args": "a 'b"}), "job.extra_args", "cannot split"),
    (base(restart={"max_restarts": -1}), "restart.max_restarts", "out of range"),
    (base(restart={"backoff_s": 10, "backoff_max_s": 1}), "restart.backoff_max_s", "less than"),
    (base(restart={"warm_start": "no"}), "restart.warm_start", "true or false"),
    (base(restart={"warm_start": 0}), "restart.warm_start", "true or false"),
    (base(health={"check_devices": "yes"}), "health.check_devices", "true or false"),
    (base(timeouts={"cluster_s": 0}), "timeouts.cluster_s", "out of range"),
    (base(timeouts={"heartbeat_s": True}), "timeouts.heartbeat_s", "integer"),
    (base(backend="mpirun", hosts=[{"name": "a", "address": "h1", "ranks": 1, "ssh": {}, "workdir": "/w"},
                                   {"name": "b", "address": "h2", "ranks": 1, "ssh": {}, "workdir": "/v"}]),
     "hosts[1].workdir", "must equal hosts[0].workdir"),
    (base(backend="mpirun", hosts=[{"ranks": 1, "env": {"A": "1"}}]), "hosts[0].env", "top-level env"),
    ([1, 2], "(top level)", "mapping"),
])
def test_errors_name_the_field(data, field, words):
    exc = error(data)
    assert exc.path == "c.yaml" and exc.field == field and words in exc.problem, str(exc)
    assert str(exc).startswith(f"c.yaml: {field}: ")
    assert exc.exit_code == 2


def test_warm_start_can_be_switched_off(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base(restart={"max_restarts": 2, "warm_start": False})))
    assert load_cluster(path).restart.warm_start is False
    assert load_cluster(path, dict([parse_override("restart.warm_start=true")])).restart.warm_start is True


def test_hosts_may_share_an_address_on_the_dynamic_backend():
    spec = parse_cluster(base(hosts=[{"name": "a", "ranks": 1}, {"name": "b", "ranks": 1}]), "c")
    assert [h.name for h in spec.hosts] == ["a", "b"]


def test_yaml_problems_are_cluster_file_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nname: b\n")
    with pytest.raises(ClusterFileError, match="given twice"):
        load_cluster(path)
    path.write_text("name: [\n")
    with pytest.raises(ClusterFileError, match="not valid YAML"):
        load_cluster(path)
    with pytest.raises(ClusterFileError, match="cannot read"):
        load_cluster(tmp_path / "missing.yaml")


def test_overrides_set_fields_before_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(ascend()))
    spec = load_cluster(path, dict([parse_override("hosts[0].device_ips=[1.1.1.1, 1.1.1.2]"),
                                    parse_override("master.port=9000"),
                                    parse_override("job.stage_overrides.r1.epochs=3")]))
    assert spec.hosts[0].device_ips == ("1.1.1.1", "1.1.1.2")
    assert spec.master.port == 9000 and spec.job.stage_overrides["r1"]["epochs"] == 3
    with pytest.raises(ClusterFileError, match="no such list item"):
        apply_overrides(ascend(), {"hosts[3].devices": [0]}, "c")
    with pytest.raises(ClusterFileError, match="not a field path"):
        apply_overrides(ascend(), {"hosts.[x]": 1}, "c")
    with pytest.raises(ClusterFileError, match="FIELD=VALUE"):
        parse_override("master.port")
    bad = apply_overrides(ascend(), {"master.port": 99999}, "c")
    assert "master.port" in str(error(bad))


def test_command_line_changes():
    spec = parse_cluster(base(job={"stage_overrides": {"r1": {"epochs": 2, "depth": 18}}}), "c")
    spec = with_stage_options(spec, "r1", ["epochs=5", "crop_size=33", "pretrained=null", "flip=true"])
    assert dict(spec.job.stage_overrides["r1"]) == {"epochs": 5, "depth": 18, "crop-size": 33,
                                                    "pretrained": None, "flip": True}
    assert with_max_restarts(spec, 4).restart.max_restarts == 4
    with pytest.raises(ClusterFileError, match="KEY=VALUE"):
        with_stage_options(spec, "r1", ["epochs"])
    with pytest.raises(ClusterFileError, match="not an option name"):
        with_stage_options(spec, "r1", ["$(x)=1"])


def test_to_dict_is_plain_json():
    import json
    spec = load_cluster(cluster_configs_dir() / "2x8xgpu-msrun.yaml")
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["hosts"][1]["ssh"]["user"] == "train" and data["env"] == {"NCCL_SOCKET_IFNAME": "eth0"}
