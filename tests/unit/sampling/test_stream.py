"""TextStream (gpt2lab/sampling/stream.py): a completion's text as its tokens arrive, in whole characters, cut before a
stop string and never showing part of one."""

import pytest

from gpt2lab.sampling.stream import TextStream
from gpt2lab.tokenizer import get_tokenizer


def stream_text(tokenizer, tokens, stop=()):
    text, pieces = TextStream(tokenizer, stop), []
    for token in tokens:  # as the engine does: no more tokens once a stop string appeared
        pieces.append(text.push(token))
        if text.stopped:
            return pieces, True
    return pieces + [text.flush()], False


def test_text_stream_holds_bytes_until_their_character_is_complete():
    tokenizer = get_tokenizer()
    tokens = tokenizer.encode("I like 🦙 and ☕.")
    pieces, stopped = stream_text(tokenizer, tokens)
    assert "".join(pieces) == "I like 🦙 and ☕." and not stopped
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces[:-1] and "🦙" in pieces  # a token that ended mid-character released nothing
    assert stream_text(tokenizer, tokenizer.encode("🦙")[:1])[0][-1] == "\ufffd"  # cut short: a replacement char


@pytest.mark.parametrize("stop", ["\n\n", "END", "D.", "never"])
def test_text_stream_cuts_at_a_stop_string_and_never_shows_part_of_it(stop):
    tokenizer = get_tokenizer()
    text = "First line.\n\nThe END. More after."
    tokens = [t for word in ("First", " line", ".", "\n", "\n", "The", " E", "ND", ".", " More", " after", ".")
              for t in tokenizer.encode(word)]
    assert tokenizer.decode(tokens) == text
    pieces, stopped = stream_text(tokenizer, tokens, (stop, "zzz"))
    expected = text[: text.index(stop)] if stop in text else text
    assert "".join(pieces) == expected and stopped == (stop in text)
    shown = ""
    for piece in pieces:  # at no point was more shown than the text before the stop string
        shown += piece
        assert expected.startswith(shown)
