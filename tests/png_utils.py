"""Helpers for the tests of the PNGs `gpt2lab inspect` writes: a file is checked by decoding it, not by its name."""

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_valid_png(path, size=(800, 600)):
    from matplotlib.image import imread

    assert path.stat().st_size > 1000
    assert png_size(path) == size
    pixels = imread(path)  # decodes every chunk: a truncated or corrupt file fails here
    assert pixels.shape[:2] == (size[1], size[0])
    assert pixels.std() > 0.01  # something was drawn
