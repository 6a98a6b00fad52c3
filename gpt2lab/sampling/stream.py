"""The text of a completion as its tokens arrive: released in pieces that are safe to show, cut at a stop string.

Two things make "decode each new token" wrong for a stream. A character can be split across tokens (the UTF-8
bytes of an emoji, say), so bytes are held back until their character is complete. And a stop string can arrive
over several tokens ("\\n\\n" as "\\n" then "\\n"), so text that could be the start of a stop string is held back
until it is known not to be one: a client never sees any part of a stop string, streamed or not.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded but not released yet: it may be the start of a stop string
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the text that may be shown now. Sets `stopped` once a stop string appeared."""
        self.pending += self.decoder.decode(self.tokenizer.decode_bytes([token]))
        found = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if found:
            self.stopped = True
            text, self.pending = self.pending[: min(found)], ""
            return text
        keep = self._stop_prefix_length()
        text, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        return text

    def flush(self) -> str:
        """The text held back, at the end of the completion (bytes of an unfinished character become U+FFFD)."""
        text, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        return text

    def _stop_prefix_length(self) -> int:
        """Length of the longest end of `pending` that is the start of some stop string."""
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest
