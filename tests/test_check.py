"""`fusion-fast check`: a playground with one planted problem of every kind is reported exactly."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import fusion_fast
from fusion_fast import check as check_module
from fusion_fast.check import KINDS, CheckReport, Problem, run_check
from fusion_fast.cli import main
from fusion_fast.demo import write_playground
from fusion_fast.exclude import read_exclude
from fusion_fast.synth import tiny_png

from .conftest import shared_dir, write

PLANTED = "Planted-1k.json"
BROKEN = "Broken-1k.json"
CLEAN = "Clean-1k.jsonl"
ORPHAN = "Orphan-1k.json"


def convo(*turns: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"from": role, "value": value} for role, value in turns]


def qa(question: str = "What is shown?", answer: str = "A red square.") -> list[dict[str, Any]]:
    return convo(("human", question), ("gpt", answer))


def jpeg_bytes() -> bytes:
    from PIL import Image

    rng = random.Random(0)
    img = Image.frombytes("RGB", (32, 32), bytes(rng.randrange(256) for _ in range(32 * 32 * 3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def planted_records() -> tuple[list[Any], dict[str, bytes], set[tuple[str, int]]]:
    """(records, image files to write under images/, expected (kind, record) problems)."""
    png = tiny_png()
    files: dict[str, bytes] = {}

    def image(i: int, name: str | None = None, data: bytes = png) -> str:
        path = f"Planted/{name or f'{i:03d}.png'}"
        files[path] = data
        return path

    def rec(i: int, **fields: Any) -> dict[str, Any]:
        return {"id": f"P-{i}", **fields}

    records: list[Any] = [
        rec(0, image=image(0), conversations=qa("<image>\nWhat is shown?")),
        rec(
            1, image=[image(1, "001a.png"), image(1, "001b.png")], conversations=qa("<image><image> Compare.")
        ),
        rec(2, conversations=qa("Text only question.")),
        rec(3, image="Planted/003.png", conversations=qa("<image>\nDescribe.")),  # never written
        rec(4, image=image(4), conversations=qa("Describe.\n<image>")),
        rec(5, image=image(5, "005.jpg", jpeg_bytes()[:600]), conversations=qa("<image>\nDescribe.")),
        rec(6, image=image(6, "006.png", png[:-20]), conversations=qa("<image>\nDescribe.")),
        rec(
            7,
            image=image(7),
            conversations=convo(("system", "Be brief."), ("human", "<image>Hi"), ("gpt", "Hi.")),
        ),
        rec(8, image=image(8), conversations=qa("Describe.")),
        rec(9, conversations=qa("<image>\nText only, but with a token.")),
        rec(10, video=image(10, "010.mp4"), conversations=qa("<video><video> Summarize.")),
        rec(11, image=image(11), messages=[{"role": "user", "content": "<image>Hi"}]),
        rec(12, conversations=[]),
        rec(13, conversations=convo(("human", "How many?"), ("gpt", 3))),
        rec(14, conversations=convo(("gpt", "Answer first."), ("human", "Question second?"))),
        rec(15, conversations=convo(("user", "Hi?"), ("gpt", "Hello."))),
        {"id": "P-2", "conversations": qa("Same id as record 2.")},
        {"conversations": qa("No id at all.")},
        ["not", "a", "record"],
        rec(19, image="NeverDownloaded/a.png", conversations=qa("<image>")),
        rec(20, image=["NeverDownloaded/b.png", "NeverDownloaded/c.png"], conversations=qa("<image><image>")),
        rec(21, image=None, conversations=qa("Null image.")),
        rec(22, image=[image(22), "Planted/022-missing.png"], conversations=qa("<image>\n<image>\nCompare.")),
        rec(23, conversations=convo(("human", "Unanswered?"))),
        rec(24, video=image(24, "024.mp4"), conversations=qa("<video>\nSummarize.")),
        # LLaVA-OneVision marks a video with <image>: accepted.
        rec(25, video=image(25, "025.mp4"), conversations=qa("<image>\nSummarize.")),
    ]
    expected = {
        ("missing_image", 3),
        ("unreadable_image", 5),
        ("unreadable_image", 6),
        ("image_token_mismatch", 8),
        ("image_token_mismatch", 9),
        ("image_token_mismatch", 10),
        ("missing_conversations", 11),
        ("missing_conversations", 12),
        ("missing_conversations", 13),
        ("bad_roles", 14),
        ("bad_roles", 15),
        ("duplicate_id", 16),
        ("malformed_record", 17),
        ("malformed_record", 18),
        ("malformed_record", 21),
        ("missing_image", 22),
        ("bad_roles", 23),
    }
    return records, files, expected


#: Records excluded by --write-exclude: not the duplicate id (16) nor the missing id (17), which train
#: fine; yes the records under the missing folder (19, 20).
PLANTED_BAD = [3, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 18, 19, 20, 21, 22, 23]


def clean_records(source: str, n: int, files: dict[str, bytes]) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        path = f"{source}/{i:03d}.png"
        files[path] = tiny_png()
        out.append({"id": f"{source}-{i}", "image": path, "conversations": qa("<image>\nDescribe.")})
    return out


def make_planted(root: Path) -> tuple[Path, set[tuple[str, str | None, int | None]]]:
    """A playground with one planted problem of each kind; returns (stage YAML, expected problems as
    (kind, data file name or None, record or None))."""
    pytest.importorskip("PIL")
    train = root / "train"
    jsons, images = train / "jsons", train / "images"
    records, files, expected = planted_records()
    write(jsons / PLANTED, json.dumps(records, indent=2))
    write(jsons / CLEAN, "".join(json.dumps(r) + "\n" for r in clean_records("Clean", 5, files)))
    write(jsons / ORPHAN, json.dumps(clean_records("Orphan", 3, files)))
    good = json.dumps({"id": "B-0", "conversations": qa()})
    # Record 2 lacks a comma between two keys.
    write(jsons / BROKEN, f'[{good},\n{good},\n{{"id": "B-2" "conversations": []}}]')
    for path, data in files.items():
        write(images / path, data)
    yaml = write(
        train / "stage-planted.yaml",
        "datasets:\n"
        + "".join(f"  - json_path: jsons/{name}\n" for name in (PLANTED, BROKEN, CLEAN, "Missing-5k.json"))
        + '    sampling_strategy: "first:10"\n',
    )
    want: set[tuple[str, str | None, int | None]] = {(k, PLANTED, r) for k, r in expected}
    want |= {
        ("missing_image_folder", PLANTED, None),
        ("malformed_record", BROKEN, 2),
        ("missing_json", None, None),
        ("unused_json", ORPHAN, None),
    }
    return yaml, want


def found(report: CheckReport) -> set[tuple[str, str | None, int | None]]:
    return {(p.kind, Path(p.dataset).name if p.dataset else None, p.record) for p in report.problems}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, set[tuple[str, str | None, int | None]]]:
    return make_planted(tmp_path / "playground")


def test_planted_kinds_cover_every_kind(planted) -> None:
    _, want = planted
    assert {k for k, _, _ in want} == set(KINDS)


@pytest.mark.parametrize("target", ["yaml", "root", "train", "jsons"])
def test_every_planted_problem_is_reported_and_nothing_else(planted, target: str) -> None:
    yaml, want = planted
    train = yaml.parent
    path = {"yaml": yaml, "root": train.parent, "train": train, "jsons": train / "jsons"}[target]
    report = run_check(path, decode=True)
    assert found(report) == want
    assert len(report.problems) == len(want)  # one problem each, no duplicates
    assert not report.clean
    checked = {Path(d).name for d in report.datasets}
    # A folder target checks every data file in jsons/, a YAML only those it lists.
    assert checked == {PLANTED, BROKEN, CLEAN} | ({ORPHAN} if target != "yaml" else set())
    if target != "yaml":
        assert report.datasets[str(train / "jsons" / ORPHAN)].problems == {"unused_json": 1}
    stats = report.datasets[str(train / "jsons" / PLANTED)]
    assert stats.records == 26
    assert stats.problems["unreadable_image"] == 2
    assert report.datasets[str(train / "jsons" / BROKEN)].records == 0


def test_problem_details_point_at_the_record(planted) -> None:
    yaml, _ = planted
    report = run_check(yaml, decode=True)
    jsons = yaml.parent / "jsons"
    idx = fusion_fast.open(jsons / PLANTED)
    for p in report.problems:
        if p.dataset == str(jsons / PLANTED) and p.record is not None:
            assert p.offset == idx.span(p.record)[0], p
            rec = idx[p.record]
            assert p.id == (rec.get("id") if isinstance(rec, dict) else None), p
    by_kind = {p.kind: p for p in report.problems}
    images = yaml.parent / "images"
    missing = [p for p in report.problems if p.kind == "missing_image"]
    assert [p.path for p in missing] == [
        str(images / "Planted/003.png"),
        str(images / "Planted/022-missing.png"),
    ]
    folder = by_kind["missing_image_folder"]
    assert folder.path == str(images / "NeverDownloaded")
    assert "3 files in 2 records" in folder.detail
    broken = next(p for p in report.problems if p.dataset == str(jsons / BROKEN))
    raw = (jsons / BROKEN).read_bytes()
    assert broken.offset is not None and raw[broken.offset : broken.offset + 1] == b'"'
    assert "cannot be indexed" in broken.detail
    missing_json = by_kind["missing_json"]
    assert missing_json.path == str(jsons / "Missing-5k.json")
    assert "datasets[3]" in missing_json.detail and str(jsons / "Missing-5k.json") in missing_json.detail
    assert by_kind["duplicate_id"].id == "P-2" and "record 2" in by_kind["duplicate_id"].detail


def test_without_decode_corrupt_images_pass(planted) -> None:
    yaml, want = planted
    report = run_check(yaml)
    assert found(report) == {w for w in want if w[0] != "unreadable_image"}
    assert report.decoded == 0


def test_write_exclude_round_trip(planted, tmp_path: Path) -> None:
    yaml, _ = planted
    report = run_check(yaml, decode=True)
    out = tmp_path / "exclude.json"
    assert report.write_exclude(out) == len(PLANTED_BAD)
    jsons = yaml.parent / "jsons"
    assert read_exclude(out, jsons / PLANTED).tolist() == PLANTED_BAD
    assert read_exclude(out, jsons / CLEAN).tolist() == []
    assert read_exclude(out, jsons / BROKEN).tolist() == []  # the whole file is unusable, not some records


def test_clean_demo_playground(tmp_path: Path) -> None:
    pg = write_playground(tmp_path / "demo")
    for target in (pg.yaml, pg.root, pg.jsons[1]):
        report = run_check(target, root=pg.launch_dir, decode=True)
        assert report.clean, report.problems[:5]
        assert report.records == (4000 if target != pg.jsons[1] else 1000)
    assert report.decoded > 0
    assert main(["check", str(pg.yaml), "--root", str(pg.launch_dir)]) == 0


def test_missing_images_root_is_one_folder_problem(tmp_path: Path) -> None:
    pg = write_playground(tmp_path / "demo")
    images = pg.root / "train" / "images"
    images.rename(pg.root / "elsewhere")
    report = run_check(pg.yaml, root=pg.launch_dir)
    # train/images is gone, so the data files are no longer "in a playground" by file: their images are
    # looked for next to them, in jsons/, which has no <Source> folders.
    assert {p.kind for p in report.problems} == {"missing_image_folder"}
    report = run_check(pg.yaml, root=pg.launch_dir, image_folder=tmp_path / "nowhere")
    assert [p.path for p in report.problems] == [str(tmp_path / "nowhere")] * 3
    assert run_check(pg.yaml, root=pg.launch_dir, image_folder=pg.root / "elsewhere").clean


def test_image_folder_precedence(tmp_path: Path) -> None:
    write(tmp_path / "a" / "img" / "x.png", tiny_png())
    write(tmp_path / "b" / "img" / "x.png", tiny_png())
    data = write(
        tmp_path / "a" / "data.json",
        json.dumps([{"id": 0, "image": "img/x.png", "conversations": qa("<image>")}]),
    )
    assert run_check(data).clean  # next to the data file
    assert run_check(data, image_folder=tmp_path / "b").clean
    assert not run_check(data, image_folder=tmp_path / "c").clean
    yaml = write(
        tmp_path / "stage.yaml", f"datasets:\n  - json_path: {data}\n    image_folder: {tmp_path / 'b'}\n"
    )
    # A YAML entry's own image_folder wins over --image-folder.
    assert run_check(yaml, image_folder=tmp_path / "c").clean


def test_file_without_any_id_is_one_problem(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", "".join(json.dumps({"conversations": qa()}) + "\n" for _ in range(5)))
    report = run_check(data)
    assert [(p.kind, p.record) for p in report.problems] == [("malformed_record", None)]
    assert "none of the 5 records" in report.problems[0].detail
    assert report.bad_records() == {}


def test_ids_of_the_wrong_type_and_bad_image_values(tmp_path: Path) -> None:
    records = [
        {"id": [1], "conversations": qa()},
        {"id": True, "conversations": qa()},
        {"id": 7, "image": 5, "conversations": qa("<image>")},
        {"id": 8, "image": ["a.png", 3], "conversations": qa("<image><image>")},
        {"id": 7, "conversations": qa()},
    ]
    report = run_check(write(tmp_path / "d.json", json.dumps(records)))
    assert [(p.kind, p.record) for p in report.problems] == [
        ("malformed_record", 0),
        ("malformed_record", 1),
        ("malformed_record", 2),
        ("malformed_record", 3),
        ("duplicate_id", 4),
    ]
    assert sorted(report.bad_records()[str(tmp_path / "d.json")]) == [2, 3]


def test_cli_exit_codes_and_json_schema(planted, tmp_path: Path, capsys) -> None:
    yaml, want = planted
    report_path = tmp_path / "report.json"
    assert main(["check", str(yaml), "--decode", "--json", str(report_path), "--examples", "1"]) == 1
    out = capsys.readouterr().out
    assert PLANTED in out and "missing_image_folder" in out and "problems" in out
    doc = json.loads(report_path.read_text())
    assert isinstance(doc["problems"], list) and len(doc["problems"]) == len(want)
    for p in doc["problems"]:
        assert {"kind", "dataset", "record", "id", "detail", "offset", "path"} <= p.keys()
        assert p["kind"] in KINDS
        assert p["dataset"] is None or isinstance(p["dataset"], str)
        assert p["record"] is None or isinstance(p["record"], int)
    assert {
        (p["kind"], p["dataset"] and Path(p["dataset"]).name, p["record"]) for p in doc["problems"]
    } == want
    assert doc["clean"] is False and doc["counts"]["unreadable_image"] == 2

    assert main(["check", str(tmp_path / "nope.yaml")]) == 2
    assert main(["check", str(write(tmp_path / "notes.txt", "hi"))]) == 2
    assert main(["check", str(write(tmp_path / "bad.yaml", "datasets: 3\n"))]) == 2
    assert main(["check", str(write(tmp_path / "empty.yaml", "datasets: []\n"))]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["check", str(tmp_path / "empty")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["check", str(yaml), "--no-such-flag"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["check"])
    assert e.value.code == 2


def test_cli_write_exclude(planted, tmp_path: Path) -> None:
    yaml, _ = planted
    out = tmp_path / "bad.json"
    assert main(["check", str(yaml), "--write-exclude", str(out)]) == 1
    # Without --decode the corrupt images are not found, so records 5 and 6 are not excluded.
    assert read_exclude(out, yaml.parent / "jsons" / PLANTED).tolist() == [
        r for r in PLANTED_BAD if r not in (5, 6)
    ]


def test_render_and_progress_bar(planted, monkeypatch) -> None:
    yaml, _ = planted
    monkeypatch.setattr(check_module, "PROGRESS_MIN_RECORDS", 1)
    monkeypatch.setattr(check_module, "PROGRESS_MIN_DECODES", 1)
    monkeypatch.setattr(check_module, "PROGRESS_MIN_BYTES", 1)
    for idx_file in (yaml.parent / "jsons").glob("*.ffidx"):
        idx_file.unlink()  # so the bar shows indexing too
    from fusion_fast.cli.check import render

    report = run_check(yaml, decode=True, progress=True)
    console = Console(record=True, width=200)
    render(report, console, examples=2)
    text = console.export_text()
    for kind in report.counts():
        assert f"{kind}: " in text
    assert "record 3 id 'P-3'" in text
    assert "(layout)" in text  # missing_json and unused_json belong to no checked data file
    assert f"{len(report.problems):,} problems" in text


def test_problem_json_round_trip() -> None:
    p = Problem("missing_image", "/d.json", 3, "x", "image not found: a.png", 10, "/img/a.png")
    assert Problem(**p.to_json()) == p


def test_real_files_are_checked_without_crashing(tmp_path) -> None:
    # A copy: the check indexes the files beside them, which must never happen in the shared folder.
    real = tmp_path / "real"
    shutil.copytree(shared_dir("real"), real, ignore=shutil.ignore_patterns("*.ffidx*"))
    report = run_check(real)
    by_file: dict[str, set[str]] = {}
    for p in report.problems:
        assert p.kind in KINDS
        by_file.setdefault(Path(p.dataset).name if p.dataset else "", set()).add(p.kind)
    assert report.records == sum(d.records for d in report.datasets.values()) > 8000
    # None of the referenced images are there.
    assert "missing_image" in by_file["LLaMA-Factory__llava_instruct_100.json"]
    assert "missing_image_folder" in by_file["LLaVA__blip_laion_cc_sbu_2k.json"]
    # `messages` instead of `conversations`, and no ids.
    mllm = [p for p in report.problems if p.dataset and p.dataset.endswith("mllm_demo.json")]
    assert sorted(p.record for p in mllm if p.kind == "missing_conversations") == list(range(6))
    by_name = {Path(key).name: d for key, d in report.datasets.items()}  # a symlinked ../shared works too
    mme = by_name["Bunny__bunny_mme.jsonl"]
    assert mme.problems["missing_conversations"] == mme.records == 2374
    # Well-formed LLaVA records: no schema or token problems.
    for name in (
        "Bunny__bunny_test_CQM-A.json",
        "LLaVA__blip_laion_cc_sbu_2k.json",
        "lmms-finetune__video.json",
    ):
        assert by_file[name] <= {"missing_image", "missing_image_folder", "malformed_record"}, name
    assert by_name["lmms-finetune__video.json"].problems["malformed_record"] == 1  # no ids


@pytest.mark.parametrize(
    ("conversations", "kind", "detail"),
    [
        ("hello", "missing_conversations", "conversations is a str, not a list"),
        (["hello"], "missing_conversations", "turn 0 is not an object"),
        (
            [{"value": "x"}, {"from": "gpt", "value": "y"}],
            "missing_conversations",
            "turn 0 has no string 'from'",
        ),
        (
            [{"from": "human"}, {"from": "gpt", "value": "y"}],
            "missing_conversations",
            "turn 0 has no string 'value'",
        ),
        (convo(("system", "s")), "bad_roles", "only system turns"),
        (convo(("human", "a"), ("human", "b")), "bad_roles", "turn 1 is from 'human', expected 'gpt'"),
        (
            convo(("human", "a"), ("gpt", "b"), ("system", "c"), ("gpt", "d")),
            "bad_roles",
            "turn 2 is from 'system'",
        ),
        (
            convo(("system", "s"), ("human", "a"), ("gpt", "b"), ("human", "c")),
            "bad_roles",
            "turn 3 (human) has no",
        ),
    ],
)
def test_conversation_details(tmp_path: Path, conversations: Any, kind: str, detail: str) -> None:
    data = write(tmp_path / "d.jsonl", json.dumps({"id": 1, "conversations": conversations}) + "\n")
    [problem] = run_check(data).problems
    assert (problem.kind, problem.record) == (kind, 0)
    assert problem.detail.startswith(detail), problem.detail


@pytest.mark.parametrize(
    "conversations",
    [
        convo(("system", "s"), ("system", "t"), ("human", "a"), ("gpt", "b")),
        convo(("human", "a"), ("gpt", "b"), ("human", "c"), ("gpt", "d")),
        # A token split over two turns is no token.
        convo(("human", "<ima"), ("gpt", "ge>")),
    ],
)
def test_well_formed_conversations_pass(tmp_path: Path, conversations: Any) -> None:
    data = write(tmp_path / "d.jsonl", json.dumps({"id": 1, "conversations": conversations}) + "\n")
    assert run_check(data).clean


def test_malformed_jsonl_and_plain_folder(tmp_path: Path) -> None:
    good = json.dumps({"id": 0, "conversations": qa()})
    write(tmp_path / "data" / "a.jsonl", f"{good}\n{good[:-1]}\n")
    write(tmp_path / "data" / "sub" / "b.json", json.dumps([{"id": 0, "conversations": qa()}]))
    report = run_check(tmp_path / "data")
    assert [(p.kind, Path(p.dataset or "").name, p.record) for p in report.problems] == [
        ("malformed_record", "a.jsonl", 1)
    ]
    assert report.datasets[str(tmp_path / "data" / "sub" / "b.json")].records == 1


def test_unused_json_counts_every_stage_yaml(planted) -> None:
    yaml, want = planted
    train = yaml.parent
    # Another stage of the same run uses the orphan: it is no longer unused, from either target.
    write(train / "stage2.yaml", f"datasets:\n  - json_path: jsons/{ORPHAN}\n")
    no_unused = {w for w in want if w[0] != "unused_json"}
    assert found(run_check(yaml)) == {w for w in no_unused if w[0] != "unreadable_image"}
    assert found(run_check(train.parent, decode=True)) == no_unused
    # A YAML that is not a stage YAML (a config, say) in train/ is ignored.
    write(train / "deepspeed.yaml", "zero_optimization: {stage: 2}\n")
    assert found(run_check(train.parent, decode=True)) == no_unused


def test_playground_without_stage_yaml_has_no_unused_json(tmp_path: Path) -> None:
    pg = write_playground(tmp_path / "demo")
    pg.yaml.unlink()
    assert run_check(pg.root).clean


def test_small_batches_and_chunks_give_the_same_report(planted, monkeypatch) -> None:
    yaml, want = planted
    monkeypatch.setattr(check_module, "BATCH", 4)
    monkeypatch.setattr(check_module, "EXIST_CHUNK", 3)
    monkeypatch.setattr(check_module, "DECODE_CHUNK", 2)
    report = run_check(yaml, decode=True)
    assert found(report) == want
    folder = next(p for p in report.problems if p.kind == "missing_image_folder")
    assert "3 files in 2 records" in folder.detail and "first: record 19" in folder.detail


def test_duplicate_ids_survive_hash_collisions(tmp_path: Path, monkeypatch) -> None:
    # Every id hashes alike: only really equal ids (of the same type) may be reported.
    monkeypatch.setattr(check_module, "hash", lambda _value: 7, raising=False)
    ids = ["a", "b", 1, "1", "a", 1, "c", "a"]
    data = write(tmp_path / "d.json", json.dumps([{"id": i, "conversations": qa()} for i in ids]))
    report = run_check(data)
    assert [(p.record, p.id, p.detail) for p in report.problems] == [
        (4, "a", "id 'a' is also used by record 0"),
        (5, 1, "id 1 is also used by record 2"),
        (7, "a", "id 'a' is also used by record 0"),
    ]


def test_data_files_linked_into_jsons_stay_in_the_playground(tmp_path: Path) -> None:
    pg = write_playground(tmp_path / "demo")
    store = tmp_path / "store"
    store.mkdir()
    for path in pg.jsons:  # the annotation files live elsewhere, linked into jsons/
        path.rename(store / path.name)
        path.symlink_to(store / path.name)
    for target in (pg.yaml, pg.root, pg.jsons[0]):
        report = run_check(target, root=pg.launch_dir)
        assert report.clean, report.problems[:3]
        assert {Path(d).parent for d in report.datasets} == {pg.root / "train" / "jsons"}


def test_exclude_file_makes_the_mixture_skip_bad_records(tmp_path: Path) -> None:
    mixture = pytest.importorskip("fusion_fast.mixture")
    records = [{"id": i, "conversations": qa()} for i in range(6)]
    records[1]["conversations"] = []
    records[4] = {"id": 4, "conversations": qa("<image> but no image")}
    data = write(tmp_path / "d.json", json.dumps(records))
    out = tmp_path / "bad.json"
    assert main(["check", str(data), "--write-exclude", str(out)]) == 1
    yaml = write(tmp_path / "stage.yaml", f"datasets:\n  - json_path: {data}\n    exclude: {out}\n")
    mix = mixture.Mixture.from_yaml(yaml, seed=0)
    assert [rec["id"] for rec in mix] == [0, 2, 3, 5]
    assert mix.datasets[0].excluded == 2
    assert run_check(yaml).counts() == {"missing_conversations": 1, "image_token_mismatch": 1}
