"""GPT-2's byte-level BPE, through tiktoken, working offline too.

tiktoken's `gpt2` encoding downloads its merge ranks from OpenAI's blob storage the first time. Machines that
reach only the Python package index can still get the identical ranks: the `openai-whisper` sdist ships them
as `whisper/assets/gpt2.tiktoken` (byte-identical to tiktoken's `r50k_base.tiktoken`). Where the ranks come
from, in order:
  1. an explicit file: `get_tokenizer(path)` or the environment variable GPT2LAB_BPE_FILE;
  2. gpt2lab's own cache (a copy fetched earlier, see 4);
  3. tiktoken's normal download (or tiktoken's cache of it);
  4. the whisper sdist from the package index via `pip download`, verified by sha256, then cached for 2.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from gpt2lab.storage.cache import FetchError, cache_dir, fetch_verified
from gpt2lab.errors import TokenizerError

BPE_FILE_ENV = "GPT2LAB_BPE_FILE"
BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"
EOT = "<|endoftext|>"
# GPT-2's pre-tokenisation pattern (tiktoken_ext.openai_public.r50k_pat_str)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer:
    """GPT-2 BPE: 50,257 tokens, `<|endoftext|>` = 50256 marks document boundaries (and is bos/eos)."""

    def __init__(self, encoding):
        self.encoding = encoding
        self.eot_token: int = encoding.eot_token
        self.n_vocab: int = encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        """Tokens of `text`; a literal "<|endoftext|>" in it is ordinary text, not the special token."""
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts on several threads (tiktoken releases the GIL)."""
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads or os.cpu_count() or 1)

    def decode(self, tokens) -> str:
        """Text of `tokens`; invalid UTF-8 (a character cut between tokens) becomes U+FFFD."""
        return self.encoding.decode(list(tokens))

    def decode_bytes(self, tokens) -> bytes:
        return self.encoding.decode_bytes(list(tokens))


@functools.lru_cache(maxsize=None)
def get_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """The GPT-2 tokenizer. `path`: a `gpt2.tiktoken` / `r50k_base.tiktoken` rank file to use."""
    import tiktoken

    explicit = path or os.environ.get(BPE_FILE_ENV)
    if explicit:
        return Tokenizer(_encoding_from_file(Path(explicit).expanduser()))
    cached = cache_dir() / "gpt2.tiktoken"
    if cached.exists():
        return Tokenizer(_encoding_from_file(cached))
    tried = []
    try:
        return Tokenizer(tiktoken.get_encoding("gpt2"))
    except Exception as e:  # no network: requests' ConnectionError, or a partial download
        tried.append(f"tiktoken's download ({type(e).__name__})")
    try:
        _fetch_from_package_index(cached)
        return Tokenizer(_encoding_from_file(cached))
    except TokenizerError as e:
        tried.append(str(e))
    raise TokenizerError(
        "cannot load the GPT-2 BPE ranks; tried " + "; ".join(tried) + f". Fix: connect to the internet once, "
        f"or point {BPE_FILE_ENV} at a gpt2.tiktoken file (from the {WHISPER_SDIST} sdist, {WHISPER_MEMBER})"
    )


def _encoding_from_file(path: Path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    if not path.is_file():
        raise TokenizerError(f"BPE rank file {path} does not exist (set by argument or {BPE_FILE_ENV})")
    try:
        ranks = load_tiktoken_bpe(str(path))
    except Exception as e:
        raise TokenizerError(f"{path} is not a tiktoken BPE rank file ({type(e).__name__}: {e})") from None
    if len(ranks) != 50256:
        raise TokenizerError(f"{path} holds {len(ranks)} ranks, GPT-2 has 50256 (+ {EOT}); wrong file?")
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: 50256},
        explicit_n_vocab=50257,
    )


def _fetch_from_package_index(destination: Path) -> None:
    """Download the whisper sdist with pip (honouring the user's pip config), verify and cache the ranks."""
    try:
        fetch_verified(WHISPER_SDIST, BPE_SHA256, destination, member=WHISPER_MEMBER)
    except FetchError as e:  # a failed download, no such file in the sdist, or the wrong sha256
        raise TokenizerError(f"the package index ({e})") from None
