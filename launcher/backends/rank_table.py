"""`rank_table`: one process per rank with the HCCL environment (RANK_TABLE_FILE, RANK_ID, ...)."""
from launcher.backends.base import Backend


class RankTableBackend(Backend):
    name = "rank_table"
