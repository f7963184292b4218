"""`dynamic`: the launcher starts MindSpore's scheduler and one worker per rank itself."""
from __future__ import annotations

from launcher.backends.base import MasterFirst


class DynamicBackend(MasterFirst):
    warm_starts = True
    name = "dynamic"

    def render(self, r) -> None:
        r.scheduler()
        for slot in r.slots:
            host = r.hosts[slot.host]
            env = {**r.base_env(host), "MS_ROLE": "MS_WORKER", **r.sched_env(),
                   "MS_NODE_ID": str(slot.rank), "LOCAL_RANK": str(slot.local_rank)}
            if r.spec.device != "cpu":
                env["DEVICE_ID"] = str(slot.device_id)
            proc = r.add_rank(slot, env)
            r.rank_env_file(slot, proc.env)

