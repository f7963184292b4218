"""Two-rank AllReduce on CPU: each rank contributes (rank + 1) and writes what it received."""
import json
import os
import sys

import mindspore as ms
import numpy as np
from mindspore import ops
from mindspore.communication import get_group_size, get_rank, init

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
init()
rank, size = get_rank(), get_group_size()


class _Sum(ms.nn.Cell):
    def __init__(self):
        super().__init__()
        self.reduce = ops.AllReduce()

    def construct(self, x):
        return self.reduce(x)


out = _Sum()(ms.Tensor(np.full((4,), rank + 1, np.float32))).asnumpy()
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "size": size, "values": out.tolist()}, f)
print(f"rank {rank}/{size} allreduce {out.tolist()}", flush=True)
