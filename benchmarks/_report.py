"""Write one benchmark's section of BENCHMARKS.md, keeping the other sections intact."""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
# The real MNIST test set (official IDX files) beside the checkout, when the project's shared folder is there;
# CNNLAB_SHARED_MNIST points elsewhere. Benchmarks fall back to other data without it; the product never reads it.
SHARED_MNIST = Path(os.environ.get("CNNLAB_SHARED_MNIST", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
HEADER = "# Benchmarks\n\nMeasured by the scripts in `benchmarks/`; each section is rewritten by its script.\n"


def write_section(title: str, body: str, path: Path = BENCHMARKS) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    section = f"## {title}\n\n_Measured {date.today().isoformat()}._\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    tmp.replace(path)
