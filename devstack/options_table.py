"""The README's options tables, generated from the settings' declarations so that they cannot drift from the code.

``python -m devstack.options_table --write`` rewrites every block between ``<!-- options:start -->`` and
``<!-- options:end -->`` in README.md; ``--check`` exits 1 with a diff when README differs from what would be
written (``tests/test_settings.py`` runs the same comparison). A start marker may name the sections it shows,
``<!-- options:start sections="sessions" -->``; a bare one shows every section no other block names, so a new
setting lands in a table without anyone editing the README by hand.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config.declaration import Setting
from gateway.config.settings import SECTIONS, SETTINGS

README = Path(__file__).resolve().parent.parent / "README.md"

_BLOCK = re.compile(
    r'(?P<start><!-- options:start(?: sections="(?P<sections>[^"]*)")? -->\n)'
    r"(?P<body>.*?)"
    r"(?P<end><!-- options:end -->)",
    re.DOTALL,
)


def _cell(text: str) -> str:
    # A pipe ends a table cell even inside a code span (GFM), so every one is escaped.
    return text.replace("|", "\\|")


def _row(declared: Setting) -> str:
    shown = declared.shown_default
    # A default written as the option would be (1024, Lax) is a literal; one in words or units (1 MiB) is prose.
    literal = shown and not declared.default_text and shown == declared.kind.to_text(declared.default)
    default = f"`{shown}`" if literal else shown
    return f"| `{_cell(declared.usage)}` | {_cell(default)} | {_cell(declared.explanation)} |"


def render_table(sections: Sequence[str]) -> str:
    """One options table: the settings of ``sections``, in ``--help`` order."""
    chosen = [declared for section in sections for declared in SETTINGS if declared.section == section]
    # The application first, as in the usage line; then each section's options in --help order.
    rows = [_row(declared) for declared in sorted(chosen, key=lambda declared: not declared.positional)]
    return "\n".join(["| option | default | meaning |", "|---|---|---|", *rows]) + "\n"


def render(readme: str) -> str:
    """``readme`` with every options block regenerated."""
    blocks = list(_BLOCK.finditer(readme))
    named = {
        section.strip() for block in blocks if block["sections"] is not None for section in block["sections"].split(",")
    }
    unknown = named - set(SECTIONS)
    if unknown:
        raise ValueError(f"README names sections no setting has: {', '.join(sorted(unknown))}")

    def table(block: re.Match[str]) -> str:
        if block["sections"] is None:
            sections = [section for section in SECTIONS if section not in named]
        else:
            sections = [section.strip() for section in block["sections"].split(",")]
        return block["start"] + render_table(sections) + block["end"]

    return _BLOCK.sub(table, readme)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.options_table", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite README.md's options tables")
    action.add_argument("--check", action="store_true", help="exit 1 with a diff when README.md's tables differ")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if args.write:
        if wanted != current:
            README.write_text(wanted, encoding="utf-8")
        return 0
    if wanted == current:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True), wanted.splitlines(keepends=True), "README.md", "README.md (generated)"
    )
    sys.stdout.writelines(diff)
    return 1


if __name__ == "__main__":
    sys.exit(main())
