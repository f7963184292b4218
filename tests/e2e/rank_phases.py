"""`python tests/e2e/rank_phases.py TRAIN-ARGS...`: refinenet.train with a line at each start-up phase.

Prints `phase imported`, `phase network` (context set, network built and initialised), `phase cluster`
(`init()` returned) and `phase prepared` (train cell, restore and state check done; the data pipeline
comes next) as each ends; the caller timestamps the lines as they arrive. The training itself is
refinenet.train's, unchanged. Used by benchmarks/compile_cache.py.
"""
import sys

import mindspore  # noqa: F401

import refinenet.data.pipeline as pipeline
import refinenet.dist as dist
import refinenet.model  # noqa: F401
import refinenet.train as train


def mark(name: str) -> None:
    print(f"phase {name}", flush=True)


def wrap(module, name: str, before=None, after=None) -> None:
    inner = getattr(module, name)

    def wrapped(*args, **kwargs):
        if before:
            mark(before)
        result = inner(*args, **kwargs)
        if after:
            mark(after)
        return result

    setattr(module, name, wrapped)


if __name__ == "__main__":
    mark("imported")
    wrap(dist, "init_cluster", before="network", after="cluster")
    wrap(pipeline, "build_train_dataset", before="prepared")
    sys.exit(train.main(sys.argv[1:]))
