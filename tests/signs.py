"""Photographed signs for the tests of words in photos: a real photo (examples/images) with
a sign in it, its text in a Debian font, turned a little and softened as a camera would."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
SIZE = (1280, 720)


def sign_photo(
    text: str,
    background: str = "chelsea.jpg",
    turn: float = 4.0,
    font_size: int = 72,
    colours: tuple[tuple[int, int, int], tuple[int, int, int]] = ((250, 245, 230), (20, 20, 20)),
) -> Image.Image:
    """`text` on a panel (colours: panel, ink) in front of an example photo."""
    with Image.open(EXAMPLES / background) as source:
        photo = source.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
    font = ImageFont.truetype(FONT, font_size)
    left, top, right, bottom = font.getbbox(text)
    pad = font_size // 2
    panel = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), colours[0])
    ImageDraw.Draw(panel).text((pad - left, pad - top), text, font=font, fill=colours[1])
    panel = panel.rotate(turn, resample=Image.Resampling.BICUBIC, expand=True)
    x = (SIZE[0] - panel.width) // 2
    y = SIZE[1] // 3
    photo.paste(panel, (x, y), panel)
    return photo.filter(ImageFilter.GaussianBlur(0.8))


def write_sign(path: Path, text: str, **options: object) -> Path:
    """A sign photo saved as a JPEG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sign_photo(text, **options).save(path, format="JPEG", quality=88)  # type: ignore[arg-type]
    return path


def write_plain(path: Path, background: str = "coffee.webp") -> Path:
    """A photo without any text (an example photo as it is, resized)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(EXAMPLES / background) as source:
        source.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC).save(path, quality=88)
    return path
