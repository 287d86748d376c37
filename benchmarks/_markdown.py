"""Write one benchmark's section of a Markdown results page, leaving the other sections as they are."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["replace_section"]


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace the section under ``heading`` (a ``## `` line) in ``path`` with ``body``, or append it.

    The section runs from its heading to the next ``## `` heading or the end of the file. ``body`` may start with
    ``heading`` itself; it is then not repeated. A missing file is created with a ``# Benchmarks`` title.
    """
    body = body.strip()
    if body.startswith(heading + "\n"):
        body = body[len(heading) :].strip()
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{heading}\n\n{body}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
