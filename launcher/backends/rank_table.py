"""`rank_table`: one process per rank with the HCCL environment (RANK_TABLE_FILE, RANK_ID, ...)."""
from __future__ import annotations

from launcher.backends.base import Backend
from launcher.render.artifacts import RANK_TABLE, render_rank_table


class RankTableBackend(Backend):
    warm_starts = True
    name = "rank_table"

    def render(self, r) -> None:
        table = render_rank_table(r.spec, r.slots)
        paths = r.copy_to_hosts(RANK_TABLE, table, [r.hosts[h] for h in r.by_host])
        for slot in r.slots:
            host = r.hosts[slot.host]
            env = r.base_env(host)
            env.update(RANK_TABLE_FILE=paths[host.name], RANK_ID=str(slot.rank),
                       DEVICE_ID=str(slot.device_id), RANK_SIZE=str(r.world),
                       LOCAL_RANK=str(slot.local_rank))
            proc = r.add_rank(slot, env)
            r.rank_env_file(slot, proc.env)

