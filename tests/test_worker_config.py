"""`fusion_fast.distributed.worker_config`: where code runs (rank, node ranks, DataLoader worker), read
without importing torch when torch is not imported yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fusion_fast.distributed import WorkerConfig, in_dataloader_worker, worker_config
from fusion_fast.errors import FusionFastError


def test_alone_without_torch_imported_it_stays_unimported() -> None:
    code = (
        "import json, sys\n"
        "from fusion_fast.distributed import worker_config\n"
        "c = worker_config()\n"
        "print(json.dumps([c.rank, c.world_size, c.local_rank, c.local_world_size, c.worker_id,"
        " c.num_workers, 'torch' in sys.modules]))\n"
    )
    env = {**os.environ, "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [0, 1, 3, 4, None, 0, False]


def test_the_launchers_not_distributed_convention_and_bad_values(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "-1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "")
    assert worker_config() == WorkerConfig()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(FusionFastError, match="LOCAL_WORLD_SIZE='two' in the environment"):
        worker_config()


class _WhereAmI:
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[int | None, int, bool, bool]:
        c = worker_config()
        return c.worker_id, c.num_workers, c.in_worker, in_dataloader_worker()


def test_dataloader_workers_know_their_id_and_count() -> None:
    torch_data = pytest.importorskip("torch.utils.data")
    loader = torch_data.DataLoader(
        _WhereAmI(), batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    seen = {tuple(x.tolist()) if hasattr(x, "tolist") else tuple(x) for x in loader}
    assert seen == {(0, 2, True, True), (1, 2, True, True)}
    assert not worker_config().in_worker and worker_config().num_workers == 0 and not in_dataloader_worker()


def test_torch_run_time_and_the_launchers_environment_in_one_object(monkeypatch) -> None:
    """`worker_config()` reports the group torch has (none here: 0 of 1) and what the launcher set;
    `WorkerConfig.from_env()` reads the launcher's ranks without torch."""
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, value in {**torchrun, "TORCHELASTIC_RUN_ID": "none"}.items():
        monkeypatch.setenv(name, value)
    now = worker_config()
    assert (now.rank, now.world_size, now.torchrun, now.rendezvous) == (0, 1, True, True)
    assert not now.needs_coordination
    launched = WorkerConfig.from_env()
    assert (launched.rank, launched.world_size, launched.torchrun, launched.rendezvous) == (1, 2, True, True)
    assert launched.needs_coordination and not launched.in_worker
    assert not WorkerConfig.from_env(torchrun).torchrun
