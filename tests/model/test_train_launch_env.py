"""How a training process learns that it is a rank, and which rank, from its environment."""
import pytest

from refinenet.dist import LaunchEnvError, LaunchKind, detect_launch, device_id, prepare_env


def test_single_process():
    launch = detect_launch({})
    assert (launch.kind, launch.rank, launch.size, launch.distributed) == (LaunchKind.SINGLE, 0, 1, False)
    assert detect_launch({"RANK_TABLE_FILE": "/x.json", "RANK_SIZE": "1"}).kind is LaunchKind.SINGLE
    assert detect_launch({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}).kind is LaunchKind.SINGLE


def test_dynamic_cluster_and_msrun():
    env = {"MS_ROLE": "MS_WORKER", "MS_NODE_ID": "3", "MS_WORKER_NUM": "4", "LOCAL_RANK": "1"}
    launch = detect_launch(env)
    assert (launch.kind, launch.rank, launch.size, launch.local_rank) == (LaunchKind.DYNAMIC, 3, 4, 1)
    msrun = {"MS_ROLE": "MS_WORKER", "MS_NODE_ID": "5", "MS_WORKER_NUM": "8", "RANK_SIZE": "8",
             "DEVICE_ID": "1"}
    assert detect_launch(msrun).local_rank == 1
    assert detect_launch({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2"}).local_rank is None


def test_rank_table():
    env = {"RANK_TABLE_FILE": "/r.json", "RANK_SIZE": "16", "RANK_ID": "9", "DEVICE_ID": "1",
           "LOCAL_RANK": "1"}
    launch = detect_launch(env)
    assert (launch.kind, launch.rank, launch.size, launch.local_rank) == (LaunchKind.RANK_TABLE, 9, 16, 1)
    assert device_id(launch, env) == 1


def test_mpirun_is_mapped_onto_dynamic_cluster_variables():
    env = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
           "MS_SCHED_HOST": "10.0.0.1", "MS_SCHED_PORT": "8118"}
    launch = detect_launch(env)
    assert (launch.kind, launch.rank, launch.size, launch.local_rank) == (LaunchKind.MPIRUN, 2, 4, 0)
    prepare_env(launch, env)
    assert (env["MS_ROLE"], env["MS_NODE_ID"], env["MS_WORKER_NUM"]) == ("MS_WORKER", "2", "4")


def test_mpirun_without_scheduler_address_is_refused():
    env = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}
    with pytest.raises(LaunchEnvError, match="MS_SCHED_HOST and MS_SCHED_PORT"):
        prepare_env(detect_launch(env), env)


@pytest.mark.parametrize("env, needle", [
    ({"MS_ROLE": "MS_SCHED"}, "MS_SCHED"),
    ({"MS_ROLE": "MS_WORKER", "MS_NODE_ID": "one"}, "MS_NODE_ID"),
    ({"OMPI_COMM_WORLD_SIZE": "-2"}, "negative"),
])
def test_inconsistent_environment(env, needle):
    with pytest.raises(LaunchEnvError, match=needle):
        detect_launch(env)
