"""Every ```python and ```bash block of README.md and docs/*.md runs, as written, in the folder that
`fusion-fast demo` creates (FUSION's layout: playground/train/..., scripts/train/yaml/stage1.yaml).

Blocks of one document run in order in one copy of that folder, as a reader would run them. A block
that cannot run here is preceded in the Markdown by `<!-- skip: reason -->`, and is skipped with that
reason. Illustrative output uses ```text and is not collected.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = ("python", "bash")
FENCE = re.compile(r"^```([\w+-]*)\s*$")
SKIP = re.compile(r"^<!--\s*skip:\s*(.+?)\s*-->$")
TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def collect(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if lang not in RUNNABLE:
            continue
        prev = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        skip = SKIP.match(prev)
        blocks.append(Block(doc, start + 1, lang, "\n".join(body) + "\n", skip.group(1) if skip else None))
    return blocks


BLOCKS = [b for doc in DOCS for b in collect(doc)]


def test_docs_have_runnable_examples() -> None:
    names = {b.doc.name for b in BLOCKS if b.skip is None}
    assert {"README.md", "training.md", "mixtures.md", "check.md"} <= names
    # An unfinished fence would swallow the rest of a document.
    for doc in DOCS:
        fences = [ln for ln in doc.read_text(encoding="utf-8").splitlines() if ln.startswith("```")]
        assert len(fences) % 2 == 0, f"{doc}: unbalanced code fences"


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """The folder `fusion-fast demo` writes, made once by the command itself."""
    base = tmp_path_factory.mktemp("demo-source")
    result = subprocess.run(
        [sys.executable, "-m", "fusion_fast", "demo", "fusion-fast-demo"],
        cwd=base,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    folder = base / "fusion-fast-demo"
    assert (folder / "scripts" / "train" / "yaml" / "stage1.yaml").is_file()
    return folder


@pytest.fixture(scope="session")
def tools(tmp_path_factory) -> Path:
    """`fusion-fast` on PATH as this interpreter's module, so the tree under test is what runs."""
    bin_dir = tmp_path_factory.mktemp("bin")
    exe = bin_dir / "fusion-fast"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fusion_fast "$@"\n', encoding="utf-8")
    exe.chmod(0o755)
    return bin_dir


_folders: dict[Path, Path] = {}


def folder_for(doc: Path, demo: Path, tmp_path_factory) -> Path:
    """One copy of the demo folder per document, shared by its blocks in order."""
    if doc not in _folders:
        dest = tmp_path_factory.mktemp("doc") / "fusion-fast-demo"
        shutil.copytree(demo, dest, symlinks=True)
        _folders[doc] = dest
    return _folders[doc]


def run_block(block: Block, cwd: Path, tools: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{tools}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    env.setdefault("OMP_NUM_THREADS", "1")
    if block.lang == "python":
        script = cwd / f"_doc_block_{block.doc.stem}_{block.line}.py"
        script.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs(block: Block, demo: Path, tools: Path, tmp_path_factory) -> None:
    if block.skip:
        pytest.skip(block.skip)
    cwd = folder_for(block.doc, demo, tmp_path_factory)
    result = run_block(block, cwd, tools)
    if result.returncode == 0:
        return
    output = textwrap.indent((result.stdout + result.stderr)[-4000:], "    ")
    pytest.fail(f"{block.id}: the {block.lang} block exited {result.returncode}:\n{block.code}\n{output}")


REPRODUCE = re.compile(r"^Reproduce: `([^`]+)`", re.M)


def test_benchmark_report_commands_are_valid() -> None:
    """Each table's `Reproduce:` command names options and benchmarks that exist (they are not run:
    each takes minutes to an hour)."""
    from fusion_fast.cli import build_parser

    text = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    commands = REPRODUCE.findall(text)
    assert len(commands) >= 6
    from fusion_fast.cli import bench

    suite = {b.stem for b in (REPO / "benches").glob("bench_*.py")}
    suite |= {str(entry[0]).removesuffix(".py") for entry in getattr(bench, "SUITE", ())}
    for command in commands:
        argv = command.split()
        if argv[0] == "fusion-fast":
            args = build_parser().parse_args(argv[1:])  # exits 2 on an unknown option
            assert set(args.only or []) <= suite, command
        elif argv[0] == "python":
            assert (REPO / argv[1]).is_file(), command
            help_text = subprocess.run(
                [sys.executable, str(REPO / argv[1]), "--help"], capture_output=True, text=True, timeout=120
            ).stdout
            assert all(a in help_text for a in argv[2:] if a.startswith("--")), command
        else:
            assert argv[:2] == ["bash", "scripts/gpu-checks.sh"], command


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_links_and_anchors_exist() -> None:
    for doc in DOCS:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            assert file.exists(), f"{doc.name}: link to {target}: no such file"
            if anchor and file.suffix == ".md":
                lines = file.read_text(encoding="utf-8").splitlines()
                anchors = {slug(ln.lstrip("#")) for ln in lines if ln.startswith("#")}
                assert anchor in anchors, f"{doc.name}: link to {target}: no such heading"


def test_readme_module_map_matches_the_tree() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    tree = text.split("## Module map", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"[\w.]+\.(?:rs|py)\b", tree))
    on_disk = {p.name for p in (REPO / "rust").glob("*.rs")}
    package = REPO / "python" / "fusion_fast"
    on_disk |= {
        p.name for p in [*package.glob("*.py"), *package.glob("torch/*.py")] if not p.name.startswith("_")
    }
    listed = subprocess.run(
        ["git", "ls-files", "rust/*.rs", "python/fusion_fast/*.py", "python/fusion_fast/torch/*.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    # Committed sources must be on the map (files still being written may not be yet).
    committed = {Path(p).name for p in listed.stdout.split()} & on_disk if listed.returncode == 0 else on_disk
    assert committed - named == set(), "missing from README's module map"
    assert named - on_disk - {"train_minimal.py"} == set(), "in README's module map but not in the tree"
