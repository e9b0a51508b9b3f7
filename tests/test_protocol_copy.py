"""docs/protocol.md, docs/activation-flow.txt and docs/vectors/ are the spec's own files, byte for byte.

The spec lives outside the repository (``../shared/spec`` beside a checkout, or
``$VIOPAY_SPEC_DIR``); a clone carries its copy under docs/. Where the spec is present, its
files and the copy must be identical, so a change to either is seen at once. Without it (a bare
clone), the copy must still be whole: every file the protocol names is there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def spec_dir() -> Path | None:
    configured = os.environ.get("VIOPAY_SPEC_DIR")
    candidate = Path(configured) if configured else ROOT.parent / "shared" / "spec"
    return candidate if (candidate / "PROTOCOL.md").is_file() else None


def copied_files() -> dict[str, Path]:
    """Spec-relative name → file of the repository's copy."""
    files = {
        "PROTOCOL.md": DOCS / "protocol.md",
        "activation-flow.txt": DOCS / "activation-flow.txt",
    }
    for path in sorted((DOCS / "vectors").iterdir()):
        files[f"vectors/{path.name}"] = path
    return files


def test_the_copy_is_the_spec_byte_for_byte() -> None:
    spec = spec_dir()
    copy = copied_files()
    if spec is None:
        # A bare clone: nothing to compare with; the copy must hold what the protocol cites.
        text = copy["PROTOCOL.md"].read_text(encoding="utf-8")
        assert "`vectors/`" in text and "`activation-flow.txt`" in text
        assert all(path.is_file() and path.stat().st_size > 0 for path in copy.values())
        return
    in_spec = {"PROTOCOL.md", "activation-flow.txt"} | {
        f"vectors/{p.name}" for p in (spec / "vectors").iterdir()
    }
    assert set(copy) == in_spec, "docs/vectors and the spec's vectors/ hold different files"
    for name, path in copy.items():
        assert path.read_bytes() == (spec / name).read_bytes(), (
            f"docs/{path.relative_to(DOCS)} differs from {spec / name}: copy the spec again"
        )


def test_readme_links_the_repository_copy() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in readme
    assert "(docs/protocol.md)" in readme
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).exists(), f"README links {target}, which is not in the repository"
