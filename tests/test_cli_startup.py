"""The command line starts fast: nothing heavy (torch, polars) is imported by commands that do not need
it, torchrun is recognised from its environment, and a broken torch does not break such commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_fast.distributed import WorkerConfig
from fusion_fast.errors import FusionFastError

#: What torchrun gives each process of a one-process job.
TORCHRUN_ONE = {
    "RANK": "0",
    "WORLD_SIZE": "1",
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "none",
}

PROBE = """
import sys
from fusion_fast.cli import main
try:
    status = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
except SystemExit as e:  # --help
    status = e.code
heavy = sorted(m for m in ("torch", "polars", "matplotlib", "PIL", "numpy", "yaml") if m in sys.modules)
print("IMPORTED", ",".join(heavy), file=sys.stderr)
sys.exit(status)
"""


def probe(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, set[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )
    line = next(x for x in proc.stderr.splitlines() if x.startswith("IMPORTED"))
    return proc.returncode, set(filter(None, line.split(" ", 1)[1].split(","))), proc.stderr


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "d.json"
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    path.write_text(json.dumps([{"id": i, "conversations": turns} for i in range(20)]))
    return path


def test_import_and_help_import_nothing_heavy() -> None:
    status, heavy, _ = probe()
    assert status == 0 and heavy == set()
    for command in ("--help", "index --help", "check --help", "mix --help"):
        status, heavy, _ = probe(*command.split())
        assert status == 0 and heavy == set(), (command, heavy)


def test_index_imports_no_torch(data: Path) -> None:
    for env in (None, TORCHRUN_ONE):  # built, then cached; alone and under a one-process torchrun
        status, heavy, err = probe("index", str(data), env=env)
        assert status == 0, err
        assert heavy <= {"numpy", "yaml"}, heavy
    status, heavy, err = probe("info", str(data))
    assert status == 0 and heavy <= {"numpy", "yaml"}, err


@pytest.fixture
def broken_torch(tmp_path: Path) -> dict[str, str]:
    """A torch whose import fails the way a half-installed one does (a shared library missing)."""
    pkg = tmp_path / "site" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise OSError('libtorch_cuda.so: cannot open shared object file')\n")
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))
    }


def test_a_broken_torch_does_not_break_commands_that_do_not_need_it(data: Path, broken_torch) -> None:
    for args in (
        ["--help"],
        ["index", str(data)],
        ["index", str(data)],
        ["info", str(data)],
        ["check", str(data)],
    ):
        status, _, err = probe(*args, env={**broken_torch, **TORCHRUN_ONE})
        assert status == 0, err
        assert "Traceback" not in err


def test_a_broken_torch_under_torchrun_with_ranks_is_one_error_line(data: Path, broken_torch) -> None:
    env = {**broken_torch, **TORCHRUN_ONE, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    status, _, err = probe("index", str(data), env=env)
    assert status == 1 and "Traceback" not in err
    [line] = [x for x in err.splitlines() if "error:" in x]
    assert "torch" in line and "libtorch_cuda.so" in line and "2 ranks" in line


def test_worker_config_from_torchrun_environment() -> None:
    assert WorkerConfig.from_env({}) == WorkerConfig()
    assert not WorkerConfig.from_env({}).needs_coordination
    one = WorkerConfig.from_env(TORCHRUN_ONE)
    assert one.torchrun and one.rendezvous and not one.distributed and not one.needs_coordination
    env = {**TORCHRUN_ONE, "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    job = WorkerConfig.from_env(env)
    assert (job.rank, job.world_size, job.local_rank, job.local_world_size) == (5, 8, 1, 4)
    assert job.needs_coordination and not job.in_worker
    # Without a rendezvous address there is nobody to meet (a hand-set WORLD_SIZE, say).
    assert not WorkerConfig.from_env({"RANK": "1", "WORLD_SIZE": "2"}).needs_coordination


@pytest.mark.parametrize(
    "env, name",
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"RANK": "-1"}, "RANK"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2"),
        ({"LOCAL_RANK": "x"}, "LOCAL_RANK"),
    ],
)
def test_worker_config_from_env_rejects_a_wrong_environment(env: dict[str, str], name: str) -> None:
    with pytest.raises(FusionFastError, match=name):
        WorkerConfig.from_env(env)
