"""The README and docs/*.md name only commands, options, make targets, settings and links that exist, and the
settings table in docs/serving.md lists every GUITARS_* variable the code reads."""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import click
import pytest

from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SETTINGS_DOC = ROOT / "docs" / "serving.md"
# Where the served app, the training commands and the deployment read their settings.
PRODUCT_SOURCES = ["webapp", "training", "deploy", "gunicorn.conf.py", "wsgi.py", "Makefile"]
# Knobs of the tests and benchmarks themselves (GUITARS_SCREENSHOTS): documented, but no operator's setting.
TOOL_SOURCES = ["tests", "bench"]
VARIABLE = re.compile(r"\bGUITARS_[A-Z0-9_]*[A-Z0-9]\b")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MAX_README_LINES = 250  # a newcomer's five minutes; the rest belongs in docs/


def doc_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def snippets(text: str) -> list[str]:
    """Every line of every fenced block, and every inline code span outside them."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return lines + INLINE.findall(FENCE.sub("", text))


def words(snippet: str) -> list[str]:
    """The snippet's words up to a comment or the end of its first shell command; `[--opt]` read as `--opt`."""
    out = []
    for raw in snippet.replace("\\|", "|").split():
        if raw.startswith("#") or raw in ("|", "&&", ";", "||"):
            break
        word = raw.strip("[]")
        if word:
            out.append(word)
    return out


@cache
def flask_cli() -> click.Group:
    """What `flask --app wsgi ...` offers: the app's commands plus Flask's own."""
    from flask.cli import routes_command, run_command, shell_command

    from webapp import create_app

    app = create_app({"TESTING": True})
    group = click.Group("flask", commands=dict(app.cli.commands))
    for command in (run_command, shell_command, routes_command):
        group.add_command(command)
    return group


@cache
def training_cli() -> click.Group:
    from training.cli import main

    return main


def option_names(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(opt for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--"))
    return names


def all_commands(group: click.Group):
    for command in group.commands.values():
        yield command
        if isinstance(command, click.Group):
            yield from all_commands(command)


def takes_value(command: click.Command, name: str) -> bool:
    for param in command.params:
        if isinstance(param, click.Option) and name in param.opts:
            return not param.is_flag and not param.count
    return False


def check_invocation(root: click.Group, args: list[str], where: str) -> list[str]:
    """Problems with `root args...`: unknown commands, subcommands or options (placeholders are fine)."""
    problems, command, skip = [], root, False
    path = [root.name or "?"]
    for word in args:
        if skip:
            skip = False
            continue
        if word.startswith("--"):
            for name in word.split("=", 1)[0].split("/"):
                if name not in option_names(command):
                    problems.append(f"{where}: `{' '.join(path)}` has no option {name}")
            skip = "=" not in word and takes_value(command, word)
        elif word.startswith("-") or word == "...":
            continue
        elif isinstance(command, click.Group):
            if word not in command.commands:
                problems.append(f"{where}: `{' '.join(path)}` has no command {word!r}")
                break
            command = command.commands[word]
            path.append(word)
        # else: an argument or a placeholder of a command
    return problems


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))


def bench_options(module: str) -> set[str] | None:
    path = ROOT / "bench" / f"{module}.py"
    if not path.exists():
        return None
    return set(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)", path.read_text())) | {"--help"}


def command_problems(snippet: str, where: str) -> list[str]:
    w = words(snippet)
    problems = []
    top = set(flask_cli().commands)
    for i, word in enumerate(w):
        if word == "flask" or word.endswith("/flask"):
            rest = w[i + 1:]
            if rest[:1] == ["--app"]:
                rest = rest[2:]
            return problems + check_invocation(flask_cli(), rest, where)
        if word == "-m" and i + 1 < len(w):
            module = w[i + 1]
            if module == "training":
                return problems + check_invocation(training_cli(), w[i + 2:], where)
            if module.startswith("bench."):
                known = bench_options(module.split(".", 1)[1])
                if known is None:
                    return [f"{where}: no module {module}"]
                return [f"{where}: {module} has no option {opt}" for opt in w[i + 2:]
                        if opt.startswith("--") and opt.split("=")[0] not in known]
            return problems
        if word == "make":
            targets = make_targets()
            for target in w[i + 1:]:
                if "=" in target or not re.fullmatch(r"[a-z][\w-]*", target):
                    break
                if target not in targets:
                    problems.append(f"{where}: the Makefile has no target {target!r}")
            return problems
    if w and w[0] in top and len(w) > 1:  # shorthand such as `evaluate --valid-only` or `dataset review`
        return check_invocation(flask_cli(), w, where)
    if w and w[0].startswith("--"):  # an option on its own: some command of ours must have it
        known = set().union(*(option_names(c) for g in (flask_cli(), training_cli()) for c in all_commands(g)))
        known |= set().union(*(bench_options(p.stem) or set() for p in (ROOT / "bench").glob("*.py")))
        return [f"{where}: no command has the option {name}" for word in w if word.startswith("--")
                for name in word.split("=", 1)[0].split("/") if name not in known]
    return problems


def variables_in(sources: list[str], exclude: Path | None = None) -> set[str]:
    found = set()
    for source in sources:
        base = ROOT / source
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file() and p.suffix != ".pyc"]
        for path in files:
            if path != exclude:
                found |= set(VARIABLE.findall(path.read_text(encoding="utf-8", errors="replace")))
    return found


def settings_table() -> set[str]:
    """The GUITARS_* variables with a row in docs/serving.md's settings table (first column)."""
    section = doc_text(SETTINGS_DOC).split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return {name for row in rows for name in VARIABLE.findall(row.split("|")[1])}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", doc_text(path)), re.M):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_option_and_make_target_the_docs_name_exists(doc):
    where = doc.relative_to(ROOT).as_posix()
    problems = [p for s in snippets(doc_text(doc)) for p in command_problems(s, where)]
    assert not problems, "\n".join(problems)


def test_the_docs_check_reads_commands_as_the_cli_does():
    assert command_problems(".venv/bin/flask --app wsgi evaluate --model runs/x --data D [--tta] [--plot cm.png]", "t") == []
    assert command_problems("flask --app wsgi train --data D --pretrained/--no-pretrained --progress", "t") == []
    assert command_problems("python -m training dataset demo --out d --per-class 80", "t") == []
    assert command_problems("accelerate launch --multi_gpu -m training train --data D --recipe blog", "t") == []
    assert command_problems("GUITARS_MODEL=runs/mine make serve", "t") == []
    assert command_problems("--token", "t") == []
    assert command_problems("flask train --data D --bogus-flag", "t") == ["t: `flask train` has no option --bogus-flag"]
    assert command_problems("flask dataset clean --data D", "t") == ["t: `flask dataset` has no command 'clean'"]
    assert command_problems("evaluate --viewz", "t") == ["t: `flask evaluate` has no option --viewz"]
    assert command_problems("make deploy", "t") == ["t: the Makefile has no target 'deploy'"]
    assert command_problems("--nothing-has-this", "t") == ["t: no command has the option --nothing-has-this"]


def test_every_setting_the_docs_name_is_read_by_the_code():
    named = set().union(*(VARIABLE.findall(doc_text(doc)) for doc in DOCS))
    read = variables_in(PRODUCT_SOURCES) | variables_in(TOOL_SOURCES, exclude=Path(__file__).resolve())
    assert named, "no GUITARS_* variable found in the docs"
    assert not named - read, f"named in the docs but read nowhere in the code: {sorted(named - read)}"
    table = settings_table()
    product = variables_in(PRODUCT_SOURCES)
    assert not table - product, f"in docs/serving.md's settings table but not read by the app: {sorted(table - product)}"


def test_every_setting_the_code_reads_has_a_row_in_the_settings_table():
    missing = variables_in(PRODUCT_SOURCES) - settings_table()
    assert not missing, f"read by the code but missing from docs/serving.md's settings table: {sorted(missing)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_between_the_docs_resolve(doc):
    problems = []
    for target in LINK.findall(FENCE.sub("", doc_text(doc))):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not problems, "\n".join(problems)


def test_the_readme_stays_a_five_minute_read():
    lines = doc_text(ROOT / "README.md").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move details into docs/"
