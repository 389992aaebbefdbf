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


# -- camera RAW (DNG) and big phone photos ------------------------------------------

# A DNG's ColorMatrix1 maps XYZ to the camera's RGB; this camera's RGB is linear sRGB, so the
# demosaiced result comes out close to the photo the mosaic was sampled from.
XYZ_TO_LINEAR_SRGB = (
    (3.2406, -1.5372, -0.4986),
    (-0.9689, 1.8758, 0.0415),
    (0.0557, -0.2040, 1.0570),
)
WHITE_LEVEL = 4095  # 12-bit sensor
# EXIF orientation: how the stored pixels turn to be upright, as the Pillow transpose that
# stores an upright photo that way (6: the camera was turned clockwise).
STORED_SIDEWAYS = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}


def _rationals(matrix: tuple[tuple[float, ...], ...]) -> tuple[int, ...]:
    return tuple(v for value in np.ravel(matrix) for v in (round(float(value) * 10000), 10000))


def bayer_mosaic(rgb: np.ndarray) -> np.ndarray:
    """What an RGGB sensor records of an sRGB photo: one linear 12-bit channel per pixel."""
    scaled = rgb.astype(np.float64) / 255.0
    linear = np.where(scaled <= 0.04045, scaled / 12.92, ((scaled + 0.055) / 1.055) ** 2.4)
    mosaic = np.empty(rgb.shape[:2], dtype=np.uint16)
    for (row, column), channel in {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2}.items():
        mosaic[row::2, column::2] = np.round(linear[row::2, column::2, channel] * WHITE_LEVEL)
    return mosaic


def write_dng(
    path: Path,
    upright: Image.Image,
    orientation: int = 1,
    preview_scale: float | None = None,
    taken: str = "2021:03:04 05:06:07",
) -> Path:
    """A real DNG (tifffile) of an upright RGB photo, stored as a camera held with
    `orientation` records it: the Bayer mosaic, its DNG colour tags, the orientation and
    capture date, and with `preview_scale` an 8-bit RGB preview of that fraction of its size
    in IFD 0 with the mosaic in a SubIFD, the way cameras lay out a DNG."""
    import tifffile

    transpose = STORED_SIDEWAYS[orientation]
    stored = upright.transpose(transpose) if transpose is not None else upright
    mosaic = bayer_mosaic(np.asarray(stored.convert("RGB")))
    header = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (271, "s", 0, "Imagegen", True),  # Make
        (272, "s", 0, "Bayer 12", True),  # Model
        (274, "H", 1, orientation, True),
        (306, "s", 0, taken, True),  # DateTime
    ]
    sensor = [
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (50717, "I", 1, WHITE_LEVEL, True),
        (50721, "2i", 9, _rationals(XYZ_TO_LINEAR_SRGB), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        if preview_scale is None:
            tif.write(mosaic, photometric=32803, subfiletype=0, extratags=header + sensor)
        else:
            size = (round(stored.width * preview_scale), round(stored.height * preview_scale))
            preview = np.asarray(stored.convert("RGB").resize(size, Image.Resampling.BICUBIC))
            tif.write(preview, photometric="rgb", subfiletype=1, subifds=1, extratags=header)
            tif.write(mosaic, photometric=32803, subfiletype=0, extratags=sensor)
    return path


BIG_PHOTO_SIZE = (16320, 12240)  # a 200-megapixel phone sensor


BIG_PHOTO_TAKEN = "2024:05:06 07:08:09"


def write_big_jpeg(path: Path, size: tuple[int, int] = BIG_PHOTO_SIZE) -> Path:
    """A 200-megapixel JPEG taken at BIG_PHOTO_TAKEN, mostly flat (quick to encode, 3 MB),
    made in a process of its own so that its 600 MB of pixels never stay in the test's
    memory."""
    import subprocess
    import sys

    script = (
        "import sys\nfrom PIL import Image, ImageDraw\n"
        "w, h = int(sys.argv[2]), int(sys.argv[3])\n"
        "im = Image.new('RGB', (w, h), (70, 120, 200))\n"
        "draw = ImageDraw.Draw(im)\n"
        "draw.rectangle((w // 8, h // 4, w // 2, h * 2 // 3), fill=(220, 40, 30))\n"
        "draw.ellipse((w * 5 // 8, h // 10, w * 9 // 10, h // 2), fill=(30, 200, 60))\n"
        "exif = Image.Exif()\n"
        "exif.get_ifd(0x8769)[0x9003] = sys.argv[4]\n"  # DateTimeOriginal
        "im.save(sys.argv[1], quality=85, exif=exif.tobytes())\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    arguments = [str(path), *map(str, size), BIG_PHOTO_TAKEN]
    subprocess.run([sys.executable, "-c", script, *arguments], check=True)
    return path
