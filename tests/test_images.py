"""Input images are decoded correctly or refused with one sentence; outputs are written atomically."""

import io

import numpy as np
import pytest
from PIL import Image

from llm_dit.errors import InputError
from llm_dit.images import MAX_INPUT_PIXELS, check_output_path, load_image, read_png_parameters, save_png


def test_rgba_is_composited_over_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    img.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_grey16_cmyk_and_gif(tmp_path):
    Image.new("P", (4, 4), 3).save(tmp_path / "p.png")
    Image.new("LA", (4, 4), (100, 0)).save(tmp_path / "la.png")
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    frames = [Image.new("P", (4, 4), i) for i in (1, 2)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    for name in ("p.png", "la.png", "g16.png", "c.jpg", "a.gif"):
        assert load_image(tmp_path / name).mode == "RGB"
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)  # transparent grey -> white
    assert load_image(tmp_path / "g16.png").getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    side = int(MAX_INPUT_PIXELS**0.5) + 16
    Image.new("1", (side, side)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match=r"megapixels"):
        load_image(tmp_path / "big.png")


@pytest.mark.parametrize(
    "content, needle",
    [(b"", "is empty"), (b"hello", "not an image file"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "not an image file")],
)
def test_bad_files_are_refused(tmp_path, content, needle):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(InputError, match=needle):
        load_image(tmp_path / "x.png")


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:300])
    with pytest.raises(InputError, match="t.jpg"):
        load_image(tmp_path / "t.jpg")


def test_folder_and_missing(tmp_path):
    with pytest.raises(InputError, match="is not a file"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_save_png_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "o.png"
    save_png(Image.new("RGB", (4, 4)), target, {"a": 1})
    assert read_png_parameters(target) == {"a": 1}
    before = target.read_bytes()

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        save_png(Image.new("RGB", (4, 4), (9, 9, 9)), target, {"a": 2})
    assert target.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]  # no temporary left behind


def test_check_output_path(tmp_path):
    assert check_output_path(tmp_path / "new" / "deeper" / "x.png").name == "x.png"
    with pytest.raises(InputError, match="must end in .png"):
        check_output_path(tmp_path / "x.jpg")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        check_output_path(tmp_path / "d.png")


# -- the corpus: every odd file a researcher may hand in, through the loader and the CLI -------------


def _png_claiming(tmp_path, name: str, w: int, h: int) -> None:
    """A PNG whose header claims ``w x h`` pixels but holds one pixel's data (a decompression bomb
    costs nothing to make this way; the guard must refuse it from the header, before decoding)."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # chunk type + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    (tmp_path / name).write_bytes(bytes(data))


CORPUS = {  # name -> ("ok", its size as loaded) or ("refused", what the one line says)
    "zero.png": ("refused", "is empty (0 bytes)"), "text.png": ("refused", "is not an image file"),
    "cut.png": ("refused", "could not be decoded"), "cut.jpg": ("refused", "could not be decoded"),
    "bomb.png": ("refused", "megapixels"),
    "one.png": ("ok", (1, 1)), "p.png": ("ok", (64, 48)), "la.png": ("ok", (64, 48)),
    "cmyk.jpg": ("ok", (64, 48)), "i16.png": ("ok", (64, 48)), "rgba.png": ("ok", (64, 48)),
    "exif.jpg": ("ok", (48, 64)), "anim.gif": ("ok", (64, 48)), "w.webp": ("ok", (64, 48)),
}
CORPUS_TRIED = ("image corpus: zero bytes, a text file named .png, truncated PNG and JPEG, 1x1, a 20000x20000 "
                "header (decompression bomb), modes P, LA, CMYK, I;16, RGBA, an EXIF-rotated JPEG, an animated GIF, "
                "a WebP")


def _make_corpus(tmp_path) -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image at all")
    for fmt, name in (("PNG", "cut.png"), ("JPEG", "cut.jpg")):
        b = io.BytesIO()
        photo.save(b, fmt)
        (tmp_path / name).write_bytes(b.getvalue()[: len(b.getvalue()) // 2])
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    _png_claiming(tmp_path, "bomb.png", 20000, 20000)
    Image.new("P", (64, 48), 5).save(tmp_path / "p.png")
    Image.new("LA", (64, 48), (90, 255)).save(tmp_path / "la.png")
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((48, 64), 30000, dtype=np.uint16)).save(tmp_path / "i16.png")
    photo.convert("RGBA").save(tmp_path / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise when displayed
    photo.save(tmp_path / "exif.jpg", exif=exif)
    frames = [Image.new("P", (64, 48), i) for i in (1, 2, 3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    photo.save(tmp_path / "w.webp", "WEBP")


@pytest.mark.reliability("bad input", CORPUS_TRIED + ", through the loader",
                         "decoded to an upright RGB image of the right size, or refused in one line naming the file")
@pytest.mark.parametrize("name", list(CORPUS))
def test_image_corpus_through_the_loader(tmp_path, name):
    _make_corpus(tmp_path)
    outcome, detail = CORPUS[name]
    if outcome == "ok":
        im = load_image(tmp_path / name)
        assert im.mode == "RGB" and im.size == detail
        if name == "i16.png":
            assert int(np.asarray(im)[0, 0, 0]) == round(30000 / 65535 * 255)  # scaled to 8 bits, not clipped
    else:
        with pytest.raises(InputError) as e:
            load_image(tmp_path / name)
        assert detail in str(e.value) and name in str(e.value) and "\n" not in str(e.value)


@pytest.mark.reliability("bad input", "the refused files of the image corpus as a sweep's reference",
                         "one line naming the file, exit 2, no traceback, no run folder")
@pytest.mark.parametrize("name", [n for n, (o, _) in CORPUS.items() if o == "refused"])
def test_image_corpus_through_the_cli_one_line_and_nothing_written(tmp_path, capsys, name):
    from llm_dit.cli import main

    _make_corpus(tmp_path)
    out = tmp_path / "run"
    code = main(["sweep", "--image", str(tmp_path / name), "--prompt", "a house", "--alphas", "0.3,0.6",
                 "--profile", "tiny", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and name in err[0] and CORPUS[name][1] in err[0], err
    assert "Traceback" not in err[0] and not out.exists()
