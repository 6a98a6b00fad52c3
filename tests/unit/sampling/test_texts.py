"""Numbered samples as text (gpt2lab/sampling/texts.py): streamed text is written in whole characters only."""

from gpt2lab.sampling.texts import write_text
from gpt2lab.tokenizer import get_tokenizer


def test_streaming_prints_only_whole_characters():
    tokenizer = get_tokenizer()
    text = " naïve café 🙂🤖 日本語"
    tokens = tokenizer.encode(text)
    pieces = []

    class Recorder:
        def write(self, s):
            pieces.append(s)

        def flush(self):
            pass

    count = write_text(iter(tokens), tokenizer, Recorder())
    assert count == len(tokens)
    assert "".join(pieces) == text + "\n"
    assert not any("\ufffd" in p for p in pieces)
    singles = [tokenizer.decode_bytes([t]) for t in tokens]
    assert any(b.decode("utf-8", errors="replace") != b.decode("utf-8", errors="ignore") for b in singles)  # split
