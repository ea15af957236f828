"""The command line as a user meets it: each mistake ends in one `error:` line naming the culprit with
the documented exit status and no traceback, and output sent to a file is whole (never cut to `…`,
file names with `[...]` kept as written)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fusion_fast.cli import EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, EXIT_TERMINATED, main
from fusion_fast.cli import index as cli_index

#: A long name with console markup and an emoji code in it: cut or eaten if treated as rich text.
LONG = "LLaVA[v1.5]-:smile:-" + "instruct-mix-" * 10 + "665k"
DATA = f"{LONG}.json"


def ff(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `fusion-fast ARGS` with standard output redirected to a file, as in a batch job's log."""
    out_file = cwd / "stdout.txt"
    with open(out_file, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "fusion_fast", *args],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            timeout=300,
        )
    return proc.returncode, out_file.read_text(), proc.stderr


def assert_one_error(err: str, culprit: str) -> None:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert culprit in errors[0], err
    assert f"{culprit}: {culprit}" not in errors[0], f"{culprit!r} said twice: {errors[0]}"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("transcript")
    records = [
        {"id": f"r{i}", "image": f"img/{i}.png", "conversations": [{"from": "human", "value": "<image>\nhi"}]}
        for i in range(100)
    ]
    (root / "data").mkdir()
    (root / "data" / DATA).write_text(json.dumps(records))
    (root / "stage.yaml").write_text(f"datasets:\n  - json_path: data/{DATA}\n")
    (root / "emptydir").mkdir()
    (root / "empty.json").write_text("")
    (root / "bad.yaml").write_text("datasets: [json_path: a\n")
    (root / "nodata.yaml").write_text("foo: 1\n")
    (root / "notes.txt").write_text("not a folder")
    (root / "typo.yaml").write_text(
        f"datasets:\n  - json_path: data/{DATA}\n    sampling_stratgy: first:10\n"
    )
    (root / "typo_path.yaml").write_text(f"datasets:\n  - json_pth: data/{DATA}\n")
    (root / "latin1.yaml").write_bytes(b"datasets:\n  - json_path: caf\xe9.json\n")
    return root


MISTAKES = [
    # (what a user typed, exit status, the name the error line must contain)
    (["mix", "data"], 2, "data"),
    (["show", f"data/{DATA}", "500"], 2, "500"),
    (["show", f"data/{DATA}", "-101"], 2, "-101"),
    (["check", "--json", "/no/such/dir/r.json", "stage.yaml"], 2, "/no/such/dir"),
    (["check", "--write-exclude", "notes.txt/exclude.txt", "stage.yaml"], 2, "notes.txt/exclude.txt"),
    (["check", "--json", "data", "stage.yaml"], 2, "data"),
    (["mix", "stage.yaml", "--export", "/no/such/dir/out.jsonl"], 2, "/no/such/dir"),
    (["check", "emptydir"], 2, "emptydir"),
    (["index", "emptydir"], 2, "emptydir"),
    (["index", "missing.json"], 2, "missing.json"),
    (["info", "missing.json"], 2, "missing.json"),
    (["show", "missing.json", "0"], 2, "missing.json"),
    (["check", "missing.json"], 2, "missing.json"),
    (["mix", "missing.yaml"], 2, "missing.yaml"),
    (["prepare", "/no/such/download"], 2, "/no/such/download"),
    (["info", "data"], 2, "data"),
    (["info", "bad.yaml"], 2, "bad.yaml"),
    (["mix", f"data/{DATA}"], 2, DATA),
    (["mix", "bad.yaml"], 2, "bad.yaml"),
    (["check", "bad.yaml"], 2, "bad.yaml"),
    (["mix", "nodata.yaml"], 2, "nodata.yaml"),
    (["index", "empty.json"], 1, "empty.json"),
    (["mix", "stage.yaml", "--seed", "x"], 2, "--seed"),
    (["mix", "stage.yaml", "--seed", "-1"], 2, "--seed"),
    (["index", "--threads", "0", "stage.yaml"], 2, "--threads"),
    (["check", "--examples", "-2", "stage.yaml"], 2, "--examples"),
    (["show", f"data/{DATA}", "first"], 2, "first"),
    (["index", "--index-dir", "notes.txt", "stage.yaml"], 2, "notes.txt"),
    (["info", "--index-dir", "notes.txt/idx", f"data/{DATA}"], 2, "notes.txt"),
    (["check", "--root", "/no/such/root", "stage.yaml"], 2, "/no/such/root"),
    (["check", "--image-folder", "/no/such/images", "stage.yaml"], 2, "/no/such/images"),
    (["mix", "--root", "/no/such/root", "stage.yaml"], 2, "/no/such/root"),
    (["check", "--write-exclude", "stage.yaml", "stage.yaml"], 2, "--write-exclude stage.yaml"),
    (["check", "--json", f"data/{DATA}", f"data/{DATA}"], 2, "--json"),
    (["mix", "stage.yaml", "--export", f"data/{DATA}"], 2, "--export"),
    (["mix", "--index-dir", "notes.txt", "stage.yaml"], 2, "notes.txt"),
    (["index", "--root", "notes.txt", "stage.yaml"], 2, "notes.txt"),
    (["mix", "typo.yaml"], 2, "sampling_stratgy"),
    (["check", "typo.yaml"], 2, "sampling_stratgy"),
    (["mix", "typo_path.yaml"], 2, "json_pth"),
    (["mix", "latin1.yaml"], 2, "latin1.yaml"),
    (["check", "latin1.yaml"], 2, "latin1.yaml"),
    (["synth", "/no/such/dir/x.json"], 2, "/no/such/dir"),
    (["mix", "stage.yaml", "--export", "-"], 2, "--export -"),
    (["check", "--write-exclude", "-", "stage.yaml"], 2, "--write-exclude -"),
]


@pytest.mark.parametrize("argv, status, culprit", MISTAKES, ids=[" ".join(m[0])[:40] for m in MISTAKES])
def test_a_mistake_ends_in_one_error_line(ws: Path, argv: list[str], status: int, culprit: str) -> None:
    rc, out, err = ff(*argv, cwd=ws)
    assert rc == status, err
    assert_one_error(err, culprit)


def test_output_files_are_checked_before_the_work(ws: Path) -> None:
    rc, out, err = ff("check", "--json", "/no/such/dir/r.json", "stage.yaml", cwd=ws)
    assert rc == 2 and out == "" and "records" not in err  # no report: the check never ran


def test_debug_shows_the_traceback(ws: Path) -> None:
    for extra, env in ((["--debug"], None), ([], {"FUSION_FAST_DEBUG": "1"})):
        rc, _, err = ff("show", f"data/{DATA}", "500", *extra, cwd=ws, env=env)
        assert rc == 2 and "Traceback" in err and "error:" in err


def test_malformed_file_with_markup_in_its_name(tmp_path: Path) -> None:
    (tmp_path / "LLaVA[v1.5].json").write_text('[{"a": 1}, {"a": ]')
    rc, _, err = ff("index", "LLaVA[v1.5].json", cwd=tmp_path)
    assert rc == 1
    assert_one_error(err, "LLaVA[v1.5].json")
    assert "line 1" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["index", f"data/{DATA}"],
        ["index", "--json", f"data/{DATA}"],
        ["info", f"data/{DATA}"],
        ["info", "--json", f"data/{DATA}"],
        ["mix", "stage.yaml"],
        ["mix", "--json", "stage.yaml"],
        ["check", "stage.yaml"],
        ["check", "--json", "-", "stage.yaml"],
    ],
    ids=lambda a: " ".join(a)[:30],
)
def test_redirected_output_is_whole(ws: Path, argv: list[str]) -> None:
    rc, out, err = ff(*argv, cwd=ws)
    assert rc in (0, 1), err  # check finds the missing images: exit status 1
    assert "Traceback" not in err and "…" not in out and "…" not in err
    assert LONG in out, out  # the whole name, brackets and emoji code as written
    if "--json" in argv:
        json.loads(out)


def test_show_prints_records_whole(ws: Path) -> None:
    rc, out, err = ff("show", f"data/{DATA}", "0", "-1", cwd=ws)
    assert rc == 0 and err == ""
    assert [r["id"] for r in map(json.loads, out.replace("}\n{", "}\x00{").split("\x00"))] == ["r0", "r99"]


def test_demo_output_in_a_log(tmp_path: Path) -> None:
    rc, out, err = ff("demo", str(tmp_path / "pg"), cwd=tmp_path)
    assert rc == 0 and "Traceback" not in err and "…" not in out
    assert "LLaVA-Pretrain-2k.json" in out


def test_long_work_prints_progress_lines_in_a_log(ws: Path) -> None:
    env = {"FUSION_FAST_PROGRESS_SECONDS": "0"}
    rc, out, err = ff("index", "--force", f"data/{DATA}", cwd=ws, env=env)
    assert rc == 0
    assert f"indexing {DATA}: " in err and "(100%)" in err and "/s" in err, err
    rc, out, err = ff("check", "stage.yaml", cwd=ws, env=env)
    assert f"checking {DATA}: 100 records of 100 records (100%)" in err, err
    Path(ws / "data" / f"{DATA}.ffidx").unlink()
    rc, out, err = ff("mix", "stage.yaml", cwd=ws, env=env)
    assert rc == 0 and f"indexing {DATA}: " in err, err


def test_info_says_why_it_rebuilt(ws: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": i} for i in range(10)]))
    rc, _, err = ff("info", str(data), cwd=tmp_path)
    assert rc == 0 and "there was no index" in err
    rc, out, err = ff("info", str(data), cwd=tmp_path)
    assert rc == 0 and "built the index" not in err and "no (index was valid)" in out
    time.sleep(0.01)
    data.write_text(json.dumps([{"id": i} for i in range(12)]))
    rc, out, err = ff("info", "--json", str(data), cwd=tmp_path)
    assert rc == 0 and "the data file changed since it was indexed" in err
    assert json.loads(out)["records"] == 12
    index = Path(f"{data}.ffidx")
    index.write_bytes(index.read_bytes()[:40])
    rc, _, err = ff("info", str(data), cwd=tmp_path)
    assert rc == 0 and "the index was damaged" in err, err


@pytest.mark.parametrize(
    "argv", [["mix", "stage.yaml"], ["index", f"data/{DATA}"], ["check", "stage.yaml"]], ids=lambda a: a[0]
)
def test_closed_pipe_before_a_table_exits_141(ws: Path, argv: list[str]) -> None:
    """A table printed into a pipe whose reader is gone (`| head -1` that already quit) ends with the
    documented 141, as `show` does, not with the 1 of a failed command."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_fast", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ws,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader quits before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_PIPE_CLOSED, err
    assert "error:" not in err and "Traceback" not in err


def test_closed_pipe_ends_quietly(ws: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_fast", "show", f"data/{DATA}", *["0"] * 5000],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ws,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(100)  # like `| head -3`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_PIPE_CLOSED
    assert err == ""


def _stops(exc: type[BaseException] | None, signum: int | None):
    cleaned: list[bool] = []

    def command(args: object) -> int:
        try:
            if signum is not None:
                os.kill(os.getpid(), signum)
                time.sleep(10)  # the handler interrupts this
            elif exc is not None:
                raise exc()
            return 0
        finally:
            cleaned.append(True)

    return command, cleaned


def test_sigterm_and_ctrl_c_unwind_with_their_exit_status(monkeypatch, capsys) -> None:
    for exc, signum, status, word in (
        (None, signal.SIGTERM, EXIT_TERMINATED, "terminated"),
        (KeyboardInterrupt, None, EXIT_INTERRUPTED, "interrupted"),
    ):
        command, cleaned = _stops(exc, signum)
        monkeypatch.setattr(cli_index, "run_index", command)
        started = time.monotonic()
        assert main(["index", "x.json"]) == status
        assert cleaned == [True] and time.monotonic() - started < 5
        err = capsys.readouterr().err
        assert word in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored after the command


def test_help_documents_exit_status_and_every_argument() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_fast", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for status in ("0 ", "1 ", "2 ", "130"):
        assert f"\n  {status}" in proc.stdout
    from fusion_fast.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"`fusion-fast {name}` argument {action.dest} has no help text"


@pytest.mark.parametrize(
    "signum, status, word",
    [(signal.SIGTERM, EXIT_TERMINATED, "terminated"), (signal.SIGINT, EXIT_INTERRUPTED, "interrupted")],
)
def test_a_signal_stops_a_running_check_promptly(tmp_path: Path, signum: int, status: int, word: str) -> None:
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"id": i, "conversations": turns}) + "\n" for i in range(300_000)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_fast", "check", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FUSION_FAST_PROGRESS_SECONDS": "0"},
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # progress lines: its index is built, then the records are checked
        if line.startswith("checking many.jsonl: "):
            break
        assert line.startswith("indexing many.jsonl: "), line
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert time.monotonic() - sent < 5
    assert "Traceback" not in err and err.splitlines()[-1].startswith(word)
    assert out == ""  # stopped before the report


def test_prepare_json_in_a_log(tmp_path: Path) -> None:
    from .test_prepare import build_download

    counts = build_download(tmp_path / "download")
    rc, out, err = ff("prepare", "download", "--root", "pg", "--dry-run", "--json", cwd=tmp_path)
    assert rc == 0 and "Traceback" not in err, err
    plan = json.loads(out)
    assert sorted(Path(a["source"]).name for a in plan["annotations"]) == sorted(counts)
    assert {u["action"] for u in plan["units"]} == {"extract", "link"}
    assert not (tmp_path / "pg").exists()  # a dry run writes nothing
    rc, out, err = ff("prepare", "download", "--root", "pg", "--json", cwd=tmp_path)
    result = json.loads(out)
    assert rc == (0 if result["ok"] else 1), err
    assert sum(a["records"] for a in result["annotations"]) == sum(counts.values())
    assert result["check"] is not None and "problems" in result["check"]


def test_mix_json_with_export_keeps_standard_output_json(ws: Path, tmp_path: Path) -> None:
    rc, out, err = ff("mix", "--json", "stage.yaml", "--export", str(tmp_path / "out.jsonl"), cwd=ws)
    assert rc == 0, err
    assert json.loads(out)["records"] == 100 and "wrote 100 records" in err


def test_terminal_bars_run_without_error(ws: Path, monkeypatch, capsys) -> None:
    """The terminal path (live bars, tables fitted to the window) works end to end."""
    from fusion_fast import check as check_module
    from fusion_fast.cli import output

    monkeypatch.setattr(output, "is_terminal", lambda stream: True)
    monkeypatch.setattr(cli_index, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(check_module, "PROGRESS_MIN_RECORDS", 1)
    monkeypatch.chdir(ws)
    assert main(["index", "--force", f"data/{DATA}"]) == 0
    assert main(["check", "stage.yaml"]) == 1  # the images are missing
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "[v1.5]" in captured.out


def _fifo_reader(path: Path) -> tuple[Any, list[bytes]]:
    import threading

    got: list[bytes] = []

    def read() -> None:
        with open(path, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, got


@pytest.mark.parametrize(
    "argv",
    [
        ["mix", "stage.yaml", "--export", "{out}"],
        ["check", "stage.yaml", "--write-exclude", "{out}"],
        ["synth", "--records", "20", "--force", "{out}"],
    ],
    ids=lambda a: a[0],
)
def test_output_to_a_fifo_writes_into_it_and_keeps_it(ws: Path, tmp_path: Path, argv: list[str]) -> None:
    """`--export /dev/stdout`, a named pipe or a device is written into, not replaced by a regular file
    (as root, a rename over `/dev/null` would replace the device for the whole machine)."""
    fifo = tmp_path / ("out.jsonl" if argv[0] == "synth" else "out")
    os.mkfifo(fifo)
    reader, got = _fifo_reader(fifo)
    rc, _, err = ff(*[a.replace("{out}", str(fifo)) for a in argv], cwd=ws)
    reader.join(timeout=30)
    assert rc in (0, 1) and "error:" not in err, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the named pipe was replaced"
    assert got and got[0].strip(), "nothing reached the reader"
    assert [p.name for p in tmp_path.iterdir()] == [fifo.name]  # no temporary file left beside it


def test_output_through_a_symlink_keeps_the_link(ws: Path, tmp_path: Path) -> None:
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    rc, _, err = ff("mix", "stage.yaml", "--export", str(link), cwd=ws)
    assert rc == 0, err
    assert link.is_symlink() and len(real.read_text().splitlines()) == 100


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["show", f"data/{DATA}", "0"], ["mix", "--json", "stage.yaml"]])
def test_a_full_disk_on_standard_output_is_named(ws: Path, argv: list[str]) -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "fusion_fast", *argv],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ws,
        )
    assert proc.returncode == 1, proc.stderr
    assert_one_error(proc.stderr, "standard output")
    assert "None" not in proc.stderr


@pytest.mark.parametrize("delay", [0.05, 1.5], ids=["starting", "working"])
@pytest.mark.parametrize(
    "signum, status", [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_TERMINATED)]
)
def test_ctrl_c_during_bench_reaches_every_process_quietly(
    tmp_path: Path, signum: int, status: int, delay: float
) -> None:
    """Ctrl-C reaches the whole process group: the benchmark child stops as quietly as the command."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_fast", "bench", "--quick", "--only", "index", "--out", "out"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        start_new_session=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # the child has started
        if line.startswith("running "):
            break
    time.sleep(delay)
    assert proc.poll() is None, "the benchmark ended before the signal"
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err, err


def test_a_killed_build_s_temporary_index_is_removed_by_the_next_build(tmp_path: Path) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"id": i} for i in range(10)]))
    # Temporary indexes are written only under the build lock, which the next build holds: whatever
    # matches the pattern then is a killed build's leftover, whichever process id it names.
    leftovers = [tmp_path / f".a.json.ffidx.tmp-{pid}" for pid in (os.getpid(), 4_000_000)]
    unrelated = [tmp_path / ".a.json.ffidx.tmp-x1", tmp_path / ".b.json.ffidx.tmp-1"]
    for p in leftovers + unrelated:
        p.write_bytes(b"\0" * 4096)
    rc, _, err = ff("index", "a.json", cwd=tmp_path)
    assert rc == 0, err
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in unrelated)
    assert (tmp_path / "a.json.ffidx").is_file()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("flag", ["--json", "--write-exclude"])
def test_a_full_disk_under_an_output_file_names_the_file(ws: Path, flag: str) -> None:
    rc, _, err = ff("check", flag, "/dev/full", "stage.yaml", cwd=ws)
    assert rc == 1, err
    assert_one_error(err, "/dev/full")
    assert "standard output" not in err and "wrote" not in err
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_an_interrupted_report_leaves_no_half_file(ws: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The --json report appears whole or not at all."""
    import fusion_fast.cli.check as cli_check

    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_check.json, "dump", stop)
    monkeypatch.setattr(cli_check.json, "dumps", stop)
    monkeypatch.chdir(ws)
    out = tmp_path / "report.json"
    out.write_text('{"old": "report"}')
    assert main(["check", "--json", str(out), "stage.yaml"]) == EXIT_INTERRUPTED
    assert json.loads(out.read_text()) == {"old": "report"}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize(
    "signum, status", [(signal.SIGTERM, EXIT_TERMINATED), (signal.SIGINT, EXIT_INTERRUPTED)]
)
def test_index_waiting_for_ranks_that_never_come_says_so_and_stops(
    tmp_path: Path, signum: int, status: int
) -> None:
    """torchrun's variables left in a shell: `index` waits for a rank that never comes. It says what it
    waits for, and a signal stops it (the wait happens inside torch's C++ store)."""
    pytest.importorskip("torch")
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"id": 1}]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_fast", "index", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "meeting the other ranks at 127.0.0.1:" in line, line
    time.sleep(1.0)  # inside the rendezvous by now, or about to be: either way the signal must stop it
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)  # generous: a loaded machine; without the fix it waits minutes
    assert proc.returncode == status, err
    assert "Traceback" not in err, err


def test_a_file_name_that_is_not_utf8_works_in_every_command(tmp_path: Path) -> None:
    """Linux file names are bytes: one that is not UTF-8 must be indexed, described and checked under
    its own name, not under a lossy copy that names no file."""
    name = os.fsdecode(b"caf\xe9.json")  # Latin-1, as older archives and tools write names
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    (tmp_path / name).write_text(json.dumps([{"id": 1, "conversations": turns}]))
    for argv in (["index", name], ["info", name], ["check", name], ["show", name, "0"]):
        rc, out, err = ff(*argv, cwd=tmp_path)
        assert rc == 0, (argv, err)
        assert "Traceback" not in err and "no such file" not in (out + err).lower(), (argv, out, err)
    import fusion_fast as ff_api

    idx = ff_api.open(tmp_path / name)
    assert os.path.exists(idx.path) and os.path.exists(idx.index_path)
