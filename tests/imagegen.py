"""Generated test images: distinct 'photographs' in every format, and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo_array(seed: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A smooth random colour field with blocks: different seeds look different to a CNN/ViT."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(image).copy()
    for _ in range(3):
        x, y = rng.integers(0, width - 20), rng.integers(0, height - 20)
        array[y : y + 20, x : x + 20] = rng.integers(0, 256, size=3)
    return array


def photo(seed: int, width: int = 160, height: int = 120) -> Image.Image:
    return Image.fromarray(photo_array(seed, width, height), "RGB")


def write_photo(path: Path, seed: int, width: int = 160, height: int = 120) -> Path:
    """Save a generated photo in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = photo(seed, width, height)
    if path.suffix.lower() == ".gif":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    format_by_suffix = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
    image.save(path, format=format_by_suffix.get(path.suffix.lower()))
    return path


def write_broken_files(folder: Path) -> list[Path]:
    """Files with image extensions that are not valid images."""
    folder.mkdir(parents=True, exist_ok=True)
    full = folder / "_full.jpg"
    write_photo(full, seed=99)
    data = full.read_bytes()
    full.unlink()
    files = {
        "truncated.jpg": data[: len(data) // 3],
        "empty.png": b"",
        "random.webp": np.random.default_rng(7).bytes(2048),
        "notes.jpeg": b"this is a text file, not a photo\n",
    }
    paths = []
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content)
        paths.append(path)
    return paths


ODD_NAMES = [
    "photo with spaces.jpg",
    'it\'s "quoted".png',
    "semi;colon.jpg",
    "100%_done_.png",
    "写真_東京.jpg",
    "Ünïcödé.webp",
    "UPPER.JPG",
]


def write_exif_rotated(path: Path) -> Path:
    """A JPEG stored sideways with EXIF orientation 6: upright it is portrait, red on top."""
    upright = Image.new("RGB", (80, 160), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 80, 80))
    stored = upright.rotate(90, expand=True)  # what a phone sensor wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


def write_odd_but_valid_files(folder: Path) -> list[Path]:
    """Every kind of valid image a real photo folder holds, with awkward names."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_photo(folder / name, seed=200 + i) for i, name in enumerate(ODD_NAMES)]

    def save(name: str, image: Image.Image, **options: object) -> None:
        image.save(folder / name, **options)
        paths.append(folder / name)

    grey16 = (photo_array(1)[:, :, 0].astype(np.uint16) * 257).astype(np.uint16)
    save("grey16.png", Image.fromarray(grey16, "I;16"))
    save("cmyk.jpg", photo(2).convert("CMYK"), format="JPEG")
    palette = photo(3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette-transparent.png", palette, transparency=0)
    save("rgba.png", photo(4).convert("RGBA"))
    save("la.png", photo(5).convert("LA"))
    frames = [photo(6 + i).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(3)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100)
    pages = [photo(9 + i) for i in range(3)]
    save("multipage.tiff", pages[0], save_all=True, append_images=pages[1:])
    save("tiny-1x1.png", Image.new("RGB", (1, 1), (10, 200, 30)))
    save("panorama.jpg", photo(12, width=8000, height=200), format="JPEG")
    save("heic-photo.heic", photo(13), format="HEIF")
    paths.append(write_exif_rotated(folder / "rotated-exif.jpg"))
    for sub in ("a", "b"):  # the same name in two folders, different photos
        paths.append(write_photo(folder / sub / "same-name.jpg", seed=300 + ord(sub)))
    original = write_photo(folder / "copy-1.jpg", seed=400)
    (folder / "copy-2.jpg").write_bytes(original.read_bytes())
    paths += [original, folder / "copy-2.jpg"]
    return paths


def write_bomb(path: Path, side: int = 30000) -> Path:
    """A one-bit PNG of side x side pixels: tiny on disk, gigabytes once decoded."""
    Image.new("1", (side, side)).save(path, optimize=True)
    return path


def write_ignored_entries(folder: Path) -> None:
    """Hidden files and folders, a non-image and a symlink loop: none may be indexed."""
    write_photo(folder / ".hidden.jpg", seed=500)
    write_photo(folder / ".thumbnails" / "thumb.jpg", seed=501)
    (folder / "readme.txt").write_text("not an image extension")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
