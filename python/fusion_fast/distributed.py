"""Where this code runs in a distributed job, and the index building shared among its ranks.

`WorkerConfig` says where code runs: `WorkerConfig.from_env()` reads the environment that torchrun
(`torch.distributed.run`) gives every process it starts; `worker_config()` adds what torch knows at run
time (the initialised process group, the DataLoader worker). `distributed_share` and `ensure_indexed`
build each missing index once across the ranks.

Importing torch takes seconds, so nothing here imports it at import time: the command line reads the
launcher's variables first and imports torch only when there really are other ranks to coordinate with,
and `worker_config` asks torch only when torch is already imported.
"""

from __future__ import annotations

import abc
import itertools
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CorruptIndexError, FusionFastError, IndexMissingError, StaleIndexError

if TYPE_CHECKING:
    from .index import JsonIndex

#: What torch's own store-based coordination needs: without these there is nobody to meet.
RENDEZVOUS_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: Set only by torchrun's elastic agent (not by a hand-written RANK / WORLD_SIZE).
ELASTIC_ENV = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Where this code runs: its rank in the job and, in a DataLoader worker, which worker it is (the
    facts Megatron-Energon's `WorkerConfig` carries); 0 of 1, outside a worker, when it runs alone.
    `worker_config()` reads it from torch at run time; `WorkerConfig.from_env()` from the launcher's
    environment alone, without torch."""

    #: Rank and world size: in `torch.distributed`'s default group for `worker_config()` (0 of 1 while
    #: none is initialised), as the launcher sets RANK and WORLD_SIZE for `from_env()`.
    rank: int = 0
    world_size: int = 1
    #: This rank among the node's ranks, as the launcher sets LOCAL_RANK and LOCAL_WORLD_SIZE.
    local_rank: int = 0
    local_world_size: int = 1
    #: This DataLoader worker's id; None outside a worker.
    worker_id: int | None = None
    #: How many workers this worker's DataLoader has; 0 outside a worker.
    num_workers: int = 0
    #: Started by torchrun's elastic agent.
    torchrun: bool = False
    #: MASTER_ADDR / MASTER_PORT are set: the ranks can meet through torch's TCP store.
    rendezvous: bool = False

    @property
    def in_worker(self) -> bool:
        """Whether this code runs in a DataLoader worker process."""
        return self.worker_id is not None

    @property
    def distributed(self) -> bool:
        """More than one rank in the job."""
        return self.world_size > 1

    @property
    def needs_coordination(self) -> bool:
        """Other ranks exist and can be reached: only then is torch.distributed worth importing."""
        return self.distributed and self.rendezvous

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """This process's place in the job as the launcher's environment says, without asking torch:
        RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, and whether torchrun set them.

        Missing variables take the single-process value; a value that is not a whole number in range
        raises `FusionFastError` naming the variable, since guessing would make ranks disagree."""
        env = os.environ if environ is None else environ
        world_size = _number(env, "WORLD_SIZE", 1, minimum=1)
        rank = _number(env, "RANK", 0, minimum=0)
        local_world_size = _number(env, "LOCAL_WORLD_SIZE", 1, minimum=1)
        # Launch scripts often export LOCAL_RANK=-1 to mean "not distributed" (the convention of
        # argparse defaults in many training scripts): alone, that is the single-process value.
        alone = world_size == 1
        local_rank = _number(env, "LOCAL_RANK", 0, minimum=0, negative_means_unset=alone)
        if rank >= world_size:
            raise FusionFastError(
                f"RANK={rank} is not below WORLD_SIZE={world_size} in the environment: "
                "fix the launcher's settings or unset them to run as a single process"
            )
        return cls(
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            local_world_size=local_world_size,
            **_launcher(env),
        )


def _launcher(env: Mapping[str, str]) -> dict[str, bool]:
    """`WorkerConfig`'s `torchrun` and `rendezvous`, from `env`."""
    return {
        "torchrun": any(k in env for k in ELASTIC_ENV),
        "rendezvous": all(k in env for k in RENDEZVOUS_ENV),
    }


def _number(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, negative_means_unset: bool = False
) -> int:
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    else:
        if value < 0 and negative_means_unset:
            return default
    if value < minimum:
        raise FusionFastError(
            f"{name}={text!r} in the environment is not a whole number >= {minimum}: "
            "fix the launcher's settings or unset it to run as a single process"
        )
    return value


#: This worker's `WorkerConfig`, by its `WorkerInfo` (one object per worker process).
_worker_config: tuple[object, WorkerConfig] | None = None


def worker_config() -> WorkerConfig:
    """Where this code runs, now. torch is asked only when it is already imported: without it there is
    neither a process group nor a DataLoader worker. In a DataLoader worker the answer is read once and
    kept, since it cannot change there and datasets ask for every batch."""
    global _worker_config
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    if info is not None and _worker_config is not None and _worker_config[0] is info:
        return _worker_config[1]
    rank, world_size = 0, 1
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    config = WorkerConfig(
        rank=rank,
        world_size=world_size,
        local_rank=max(0, _local_number("LOCAL_RANK", 0)),  # -1 is the usual "not distributed"
        local_world_size=max(1, _local_number("LOCAL_WORLD_SIZE", 1)),
        worker_id=None if info is None else info.id,
        num_workers=0 if info is None else info.num_workers,
        **_launcher(os.environ),
    )
    if info is not None:
        _worker_config = (info, config)
    return config


def in_dataloader_worker() -> bool:
    """`worker_config().in_worker`, for checks made per batch or per tensor: it reads neither the
    environment nor the process group, which `worker_config` must read again on every call outside a
    worker."""
    data = sys.modules.get("torch.utils.data")
    return data is not None and data.get_worker_info() is not None


def _local_number(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise FusionFastError(
            f"{name}={text!r} in the environment is not a whole number: fix the launcher's settings or "
            "unset it to run as a single process"
        ) from None


# -- distributed indexing ---------------------------------------------------------------------------

#: How long ranks wait for each other while others build indexes (big files take minutes each).
DISTRIBUTED_TIMEOUT = timedelta(hours=2)

#: How long a rank waits for the others to join the job's TCP store before giving up: ranks start within
#: seconds to minutes of each other, while torchrun variables left in a shell mean no other rank comes.
RENDEZVOUS_TIMEOUT = timedelta(minutes=10)


def _meet_the_other_ranks() -> tuple[Any, int, int]:
    """torch's env:// rendezvous, run on a helper thread so that the calling thread still sees Ctrl-C
    and SIGTERM (a wait inside torch's C++ store does not return to Python for signals); a rendezvous
    that does not complete within `RENDEZVOUS_TIMEOUT` is an error naming the variables it came from."""
    import torch.distributed as dist

    outcome: dict[str, Any] = {}

    def meet() -> None:
        try:
            outcome["ranks"] = next(dist.rendezvous("env://", timeout=RENDEZVOUS_TIMEOUT))
        except BaseException as e:  # handed to the calling thread
            outcome["error"] = e

    helper = threading.Thread(target=meet, name="fusion-fast rendezvous", daemon=True)
    helper.start()
    while helper.is_alive():
        helper.join(0.2)
    if "error" in outcome:
        env = {k: os.environ.get(k, "") for k in RENDEZVOUS_ENV}
        raise FusionFastError(
            "the other ranks of this torchrun job did not join at "
            f"{env['MASTER_ADDR']}:{env['MASTER_PORT']} (RANK={env['RANK']}, WORLD_SIZE={env['WORLD_SIZE']} "
            f"from the environment): {type(outcome['error']).__name__}: {outcome['error']}; if this is not "
            "a torchrun job, unset RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
        ) from outcome["error"]
    return outcome["ranks"]


class _Coordinator(abc.ABC):
    """One broadcast and a final barrier among the ranks of a job, for index building only."""

    rank: int
    world_size: int

    @abc.abstractmethod
    def broadcast(self, value: dict[str, Any]) -> dict[str, Any]:
        """Rank 0's `value` (JSON-like), on every rank."""

    @abc.abstractmethod
    def close(self) -> None:
        """Wait for every rank, then release what was set up."""


class _GroupCoordinator(_Coordinator):
    """Beside an initialised `torch.distributed`: a new gloo group, whatever the default backend, so
    that waiting for index builds is bound by our timeout rather than, say, NCCL's."""

    def __init__(self) -> None:
        import torch.distributed as dist

        group = dist.new_group(backend="gloo", timeout=DISTRIBUTED_TIMEOUT)
        assert isinstance(group, dist.ProcessGroup)  # every rank is a member
        self.group = group
        where = worker_config()
        self.rank, self.world_size = where.rank, where.world_size

    def broadcast(self, value: dict[str, Any]) -> dict[str, Any]:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def close(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.group)
        dist.destroy_process_group(self.group)


class _StoreCoordinator(_Coordinator):
    """Before (or without) `init_process_group`, from torchrun's environment: keys in the job's TCP
    store, so that no default process group is created (and torn down) under the training code's feet.
    Every rank must make the same sequence of calls (like collectives): call k uses key prefix k."""

    _calls = itertools.count()

    def __init__(self) -> None:
        import torch.distributed as dist

        store, self.rank, self.world_size = _meet_the_other_ranks()
        self.store = dist.PrefixStore(f"fusion-fast/index/{next(self._calls)}/", store)

    def broadcast(self, value: dict[str, Any]) -> dict[str, Any]:
        if self.rank == 0:
            self.store.set("message", json.dumps(value))
            return value
        return json.loads(self.store.get("message"))

    def close(self) -> None:
        self.store.set(f"done/{self.rank}", "1")
        self.store.wait([f"done/{r}" for r in range(self.world_size)])
        # Rank 0 may host the store: it lets go only once every other rank has stopped using it.
        if self.rank == 0:
            self.store.wait([f"left/{r}" for r in range(1, self.world_size)])
        else:
            self.store.set(f"left/{self.rank}", "1")


def _coordinator() -> _Coordinator | None:
    """How this process meets the other ranks; None when it runs alone."""
    if "torch" not in sys.modules and not _others_in_env():
        return None  # no process group exists before torch is imported: no need to import it
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if dist.is_initialized():
        return _GroupCoordinator() if worker_config().world_size > 1 else None
    if _others_in_env():
        return _StoreCoordinator()
    return None


def _others_in_env() -> bool:
    """Whether torchrun's environment names other ranks to meet through its TCP store."""
    return all(k in os.environ for k in RENDEZVOUS_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def _has_valid_index(path: Path, index_dir: str | None) -> bool:
    from .index import open as open_index

    try:
        open_index(path, rebuild="never", index_dir=index_dir)
    except (IndexMissingError, StaleIndexError, CorruptIndexError):
        return False
    return True


def _shares(paths: list[Path], world_size: int) -> list[list[Path]]:
    """Split `paths` over `world_size` ranks with balanced bytes: biggest file first, each to the rank
    with the fewest bytes so far (the lowest rank on ties). Every rank computes the same split; each
    share keeps the order of `paths`."""
    sizes = {p: p.stat().st_size for p in paths}
    load = [0] * world_size
    owner: dict[Path, int] = {}
    for p in sorted(paths, key=lambda p: (-sizes[p], str(p))):
        rank = load.index(min(load))
        owner[p] = rank
        load[rank] += sizes[p]
    return [[p for p in paths if owner[p] == r] for r in range(world_size)]


def distributed_share(
    paths: Sequence[str | os.PathLike[str]],
    *,
    index_dir: str | os.PathLike[str] | None = None,
    only_missing: bool = True,
) -> tuple[list[Path], Callable[[], None] | None]:
    """This rank's share of the data files whose index must be built, and a callable to run once they
    are built: `(my_paths, done)`.

    Under `torch.distributed` (initialised, or just torchrun's environment: then the job's TCP store is
    used and no process group is created) rank 0 finds the files without a valid index (all of them
    with `only_missing=False`) and sends the list to every rank; each rank takes its byte-balanced share,
    so every index is built exactly once. `done()` waits for all ranks. Otherwise: `(paths, None)`.
    """
    files = [Path(p) for p in paths]
    ranks = _coordinator()
    if ranks is None:
        return files, None
    idx_dir = os.fspath(index_dir) if index_dir is not None else None
    plan: dict[str, Any] = {}
    failure: Exception | None = None
    if ranks.rank == 0:
        try:
            plan["todo"] = [str(p) for p in files if not only_missing or not _has_valid_index(p, idx_dir)]
        except Exception as e:  # the other ranks wait for rank 0's word: tell them, then raise everywhere
            failure = e
            plan["error"] = f"{type(e).__name__}: {e}"
    plan = ranks.broadcast(plan)
    if "error" in plan:
        ranks.close()
        if failure is not None:
            raise failure
        raise FusionFastError(f"rank 0 could not check which indexes to build: {plan['error']}")
    return _shares([Path(p) for p in plan["todo"]], ranks.world_size)[ranks.rank], ranks.close


def ensure_indexed(
    paths_or_yaml: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    root: str | os.PathLike[str] | None = None,
    index_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> list[JsonIndex]:
    """Make sure every data file named (files, folders, stage YAMLs) has a valid index, and open them
    all, in order.

    Under `torch.distributed` (or torchrun's environment) the files still missing an index are split
    over the ranks and each is built exactly once (on a shared filesystem), then all ranks meet at a
    barrier; each rank builds with `threads` cores (default: the machine's cores divided among the
    node's ranks). Without it, this simply opens (building as needed) each file. `JsonIndex.built` of
    the result tells which indexes this process built.
    """
    from .index import open as open_index
    from .indexing import expand_targets

    targets = [paths_or_yaml] if isinstance(paths_or_yaml, (str, os.PathLike)) else list(paths_or_yaml)
    paths = expand_targets(targets, root=os.fspath(root) if root is not None else None)
    idx_dir = os.fspath(index_dir) if index_dir is not None else None
    mine, done = distributed_share(paths, index_dir=idx_dir)
    opened: dict[Path, JsonIndex] = {}
    if done is not None:
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // worker_config().local_world_size)
        try:
            for p in mine:
                opened[p] = open_index(p, index_dir=idx_dir, threads=threads)
        finally:
            done()  # reached even when a build fails, so the other ranks are not left waiting
    return [opened[p] if p in opened else open_index(p, index_dir=idx_dir, threads=threads) for p in paths]


__all__ = [
    "ELASTIC_ENV",
    "RENDEZVOUS_ENV",
    "DISTRIBUTED_TIMEOUT",
    "RENDEZVOUS_TIMEOUT",
    "WorkerConfig",
    "worker_config",
    "in_dataloader_worker",
    "distributed_share",
    "ensure_indexed",
]
