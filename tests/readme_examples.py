"""Read the examples out of README.md, so that tests can run them (imported by test_readme, test_demo).

* ```` ```console ```` blocks: ``$ command`` lines (``\\`` continues a line) followed by the output the
  command prints. Every one is run by ``tests/test_readme.py`` and must print exactly that.
* ```` ```python ```` blocks: run by the tests that have what they need (the demo's outputs).
* The command table: every ``hires-vlm …`` command and option it names must exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass
class ConsoleExample:
    command: str
    output: str
    line: int  # where the command starts in README.md (1-based), for the test id


def blocks(lang: str, text: str | None = None) -> list[tuple[int, str]]:
    """``(first line number, body)`` of every fenced block of language ``lang``."""
    text = README.read_text(encoding="utf-8") if text is None else text
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 2, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            out.append((start, "\n".join(body)))
        i += 1
    return out


def console_examples(text: str | None = None) -> list[ConsoleExample]:
    examples: list[ConsoleExample] = []
    for start, body in blocks("console", text):
        cmd: list[str] | None = None
        output: list[str] = []
        at = start
        cont = False
        for k, line in enumerate(body.splitlines()):
            if cont:
                cmd.append(line.strip())
                cont = line.endswith("\\")
                continue
            if line.startswith("$ "):
                if cmd is not None:
                    examples.append(ConsoleExample(_join(cmd), "\n".join(output), at))
                cmd, output, at = [line[2:].strip()], [], start + k
                cont = line.endswith("\\")
            elif cmd is not None:
                output.append(line)
        if cmd is not None:
            examples.append(ConsoleExample(_join(cmd), "\n".join(output), at))
    return examples


def _join(parts: list[str]) -> str:
    return " ".join(p.rstrip("\\").strip() for p in parts)


def table_commands(text: str | None = None) -> list[str]:
    """The ``hires-vlm …`` commands in the first column of the README's command table."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [m.group(1).replace("\\|", "|") for m in re.finditer(r"^\| `(hires-vlm [^`]+)` \|", text, re.M)]
