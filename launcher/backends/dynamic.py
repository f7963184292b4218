"""`dynamic`: the launcher starts MindSpore's scheduler and one worker per rank itself."""
from launcher.backends.base import Backend


class DynamicBackend(Backend):
    name = "dynamic"
