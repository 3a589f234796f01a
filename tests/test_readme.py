"""The README's command-line examples are true: each prints what the README shows; each command exists.

The Python example and the ``generate`` example need a trained demo model; the slow demo test
(``tests/test_demo.py``) runs them against its own output.
"""

import re
import shlex
import subprocess
import sys

import pytest

from readme_examples import README, console_examples, table_commands

EXAMPLES = console_examples()


def _run(args: list[str]) -> subprocess.CompletedProcess:
    assert args[0] == "hires-vlm", f"a README console example must run hires-vlm, not {args[0]!r}"
    return subprocess.run([sys.executable, "-m", "hires_vlm.cli", *args[1:]], capture_output=True, text=True,
                          cwd=README.parent, timeout=300)


def test_the_readme_has_console_examples():
    assert len(EXAMPLES) >= 3, "the README's command-line examples are written as ```console blocks"


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"README.md:{e.line}" for e in EXAMPLES])
def test_console_example_prints_what_the_readme_shows(example):
    proc = _run(shlex.split(example.command))
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = "\n".join(line.rstrip() for line in proc.stdout.rstrip().splitlines())
    want = "\n".join(line.rstrip() for line in example.output.rstrip().splitlines())
    assert got == want, f"README.md:{example.line}: `{example.command}` now prints:\n{got}"


COMMANDS = table_commands()


def test_the_command_table_lists_every_subcommand():
    from hires_vlm.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    listed = {c.split()[1] for c in COMMANDS}
    assert listed == set(sub.choices), f"README table {sorted(listed)} vs CLI {sorted(sub.choices)}"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_and_option_in_the_table_exists(command):
    words = command.split()
    path = []
    for w in words[1:]:  # the subcommand path: lower-case words before the first argument or option
        if not re.fullmatch(r"[a-z][a-z-]*", w):
            break
        path.append(w)
    proc = _run(["hires-vlm", *path, "--help"])
    assert proc.returncode == 0, proc.stderr
    for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", command):
        assert option in proc.stdout, f"`hires-vlm {' '.join(path)}` has no {option} (README table: {command})"


def test_help_imports_neither_torch_nor_transformers():
    """`hires-vlm --help` (and every subcommand's) must not pay for torch and transformers."""
    code = ("import sys; from hires_vlm.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
