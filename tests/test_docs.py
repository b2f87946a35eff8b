"""The documentation runs as written: README.md and docs/*.md are checked block by block, and the
mkdocs site builds with warnings as errors.

Every fenced block must name its kind:
- ```python blocks are executed page by page: a page's blocks run in order in one namespace (so a later
  block may use what an earlier one defined), a fresh namespace per page, in a temporary working
  directory, in this process (warnings are errors, and HBFAST_CACHE is the session's private one, as in
  every test); a page whose blocks import a library that is not installed (faiss, sentence-transformers)
  skips, except under CI=true, where the test extra has them all;
- ```bash blocks: every command is checked without running it: `hbfast ...` (also after
  `python -m` / `torchrun ... -m`) must parse with the real parser (`hbfast.cli.build_parser`), a
  script (`python x.py`, `torchrun x.py`, `bash x.sh`) or a pytest path must exist, and
  `pip install ".[extra]"` must name extras that pyproject.toml declares; any other command fails
  (write it in a ```text block, or teach this test about it);
- ```json blocks must parse; ```text blocks (output, formats, sketches) are not checked.
Repository paths quoted in backticks (`examples/x.py`, `benchmarks/*.py`, ...) in those pages and in
benchmarks/RESULTS.md (which docs/benchmarks.md includes) must exist.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KINDS = ("python", "bash", "json", "text")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<kind>[^`\s]*)\s*$")
REPO_PATH = re.compile(r"`((?:src|tests|benchmarks|examples|scripts|csrc|docs)/[^`\s]*)`")


def fenced_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line number, kind, text) of every fenced block in the Markdown file ``path``."""
    blocks, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        i += 1
        if not match:
            continue
        start, indent, fence = i, len(match["indent"]), match["fence"]
        while i < len(lines) and lines[i].strip() != fence:
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.name}:{start}: unclosed code block")
        body = "\n".join(line[indent:] for line in lines[start:i])
        blocks.append((start, match["kind"], body + "\n"))
        i += 1
    return blocks


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def pages_with(kind: str) -> list[Path]:
    return [p for p in PAGES if any(k == kind for _, k, _ in fenced_blocks(p))]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_block_names_its_kind(page):
    for line, kind, _ in fenced_blocks(page):
        assert kind in KINDS, f"{page_id(page)}:{line}: code block kind {kind!r}, expected one of {KINDS}"


@pytest.mark.parametrize("page", pages_with("python"), ids=page_id)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for line, kind, body in fenced_blocks(page):
        if kind == "python":
            try:
                exec(compile(body, f"{page_id(page)}:{line}", "exec"), namespace)
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] == "hbfast" or os.environ.get("CI") == "true":
                    raise
                pytest.skip(f"{page_id(page)}:{line} needs {e.name} (the test extra has it)")
            except Exception as e:
                raise AssertionError(f"{page_id(page)}:{line}: the python block fails: {e!r}\n{body}") from e


# ---- bash blocks -------------------------------------------------------------------------------------

def commands(script: str) -> list[list[str]]:
    """The simple commands of a bash block: continuations joined, comments dropped, split at && || ; |."""
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    result, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "\n"):
            result.append(current)
            current = []
        else:
            current.append(token)
    result.append(current)
    return [c for c in result if c]


def lines_of(script: str) -> list[str]:
    return [line for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def declared_extras() -> set[str]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the installed metadata (as of the last install)
        from importlib.metadata import metadata

        return set(metadata("hbfast").get_all("Provides-Extra") or ())
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def check_hbfast(argv: list[str]) -> None:
    from hbfast.cli import build_parser

    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as e:  # argparse exits 0 after --help, 2 on a bad command line
        if e.code not in (0, None):
            raise AssertionError(f"`hbfast {shlex.join(argv)}` does not parse (exit {e.code})") from None


def check_exists(pattern: str) -> None:
    assert glob.glob(str(ROOT / pattern)), f"{pattern} does not exist in the repository"


def check_command(argv: list[str]) -> None:
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    program, args = argv[0], argv[1:]
    if program == "hbfast":
        return check_hbfast(args)
    if program in ("python", "torchrun"):
        if "-m" in args:
            module, rest = args[args.index("-m") + 1], args[args.index("-m") + 2:]
            if module == "hbfast":
                return check_hbfast(rest)
            if module == "pytest":
                for arg in rest:
                    if not arg.startswith("-"):
                        check_exists(arg.split("::")[0])
                return None
            if module == "mkdocs":
                return None
            raise AssertionError(f"`{shlex.join(argv)}`: unknown module {module!r}")
        scripts = [a for a in args if a.endswith(".py")]
        assert scripts, f"`{shlex.join(argv)}` names no script"
        return check_exists(scripts[0])
    if program == "bash":
        return check_exists(args[0])
    if program == "pip" and args[:1] == ["install"]:
        for arg in args[1:]:
            extras = re.fullmatch(r"\.\[([^\]]+)\]", arg)
            if extras:
                missing = set(extras[1].split(",")) - declared_extras()
                assert not missing, f"`{shlex.join(argv)}`: pyproject.toml has no extra {sorted(missing)}"
        return None
    raise AssertionError(f"`{shlex.join(argv)}`: not a command this test knows; use a ```text block for it")


@pytest.mark.parametrize("page", pages_with("bash"), ids=page_id)
def test_bash_commands_parse(page):
    for line, kind, body in fenced_blocks(page):
        if kind != "bash":
            continue
        for text in lines_of(body):
            for argv in commands(text):
                try:
                    check_command(argv)
                except AssertionError as e:
                    raise AssertionError(f"{page_id(page)}:{line}: {e}") from None


def test_the_checks_can_fail():
    """The bash checker rejects a wrong flag, a missing script, an unknown extra and an unknown command."""
    check_command(["hbfast", "train", "--help"])
    for bad in ("hbfast eval --no-such-flag", "hbfast eval --dataset no-such-set", "hbfast no-such-command", "python benchmarks/no_such.py", 'pip install ".[no-such-extra]"',
                "rm -rf /tmp/x"):
        with pytest.raises(AssertionError):
            for argv in commands(bad):
                check_command(argv)
    assert commands("a x \\\n  y && b # c") == [["a", "x", "y"], ["b"]]


@pytest.mark.parametrize("page", [*PAGES, ROOT / "benchmarks" / "RESULTS.md"], ids=page_id)
def test_quoted_repository_paths_exist(page):
    for path in REPO_PATH.findall(page.read_text(encoding="utf-8")):
        check_exists(path.split("::")[0].rstrip(".,:;)"))


def test_readme_is_a_front_page():
    """README.md stays short (the rest lives in docs/), and its relative links name files that exist."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_json_blocks_parse():
    import json

    for page in PAGES:
        for line, kind, body in fenced_blocks(page):
            if kind == "json":
                try:
                    json.loads(body)
                except ValueError as e:
                    raise AssertionError(f"{page_id(page)}:{line}: {e}") from None


# ---- the site ----------------------------------------------------------------------------------------

def test_mkdocs_builds_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs is not installed: the test extra installs hbfast[docs]")
        pytest.skip("mkdocs is not installed (pip install '.[docs]')")
    # no -q: mkdocs counts the warnings that --strict turns into a failure only when they are logged
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8").count("contrastive_loss") > 1
