"""Words in photos, measured with the real OCR weights: photos with text rendered the way
photos carry it, plus photos without text, read by image-search's OCR and searched by words.

    uv run python bench/bench_ocr_quality.py [--text 560] [--plain 220] [--kana 60]
        [--variants default,det640,classifier]

Photos are made at 1920x1080 on backgrounds cut from real photos (examples/images: scikit-
image's samples), text from several Debian fonts (DejaVu, Liberation, Noto CJK: apt-get
install fonts-noto-cjk) on signs, on plain paper-like backgrounds and straight on the photo,
turned up to 15 degrees either way, in perspective, blurred and JPEG-compressed, then prepared
exactly as `index` prepares them (960x540). Each text photo gives a word query (one of its
words); each is searched among all the photos as `search --words` ranks them (words.py), and
the photo it came from must come first, other photos that truly hold the word aside.
Measured: recall@1 and @5 by the text's height in the processed image (its ink, capitals
and descenders: the font's size is about 1.3x that), mean reciprocal rank, the queries of at
least 4 characters with a photo without text in their top 5, and OCR's time per photo.
Japanese kana are reported apart (the bundled recogniser reads Chinese and English).

Variants: `default` (what index runs), `det640` (the detector at 640 px on the longer
side), `classifier` (PaddleOCR's direction classifier between detection and recognition).
Targets (issue 26): recall@5 >= 0.90 for text >= 24 px, no photo without text in the top 5
of a query of >= 4 characters.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from common import DATA, ROOT, cores
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from image_search.images import ResizeSpec, prepare_bytes
from image_search.ocr import DETECT_SIDE, TextReader, line_tensor, models_folder
from image_search.words import normalise, rank_texts

CANVAS = (1920, 1080)
PROCESSED = ResizeSpec(960, 540, "fit", 250_000_000)
SCALE = CANVAS[0] / PROCESSED.width
BACKGROUNDS = ["astronaut.jpg", "brick.png", "chelsea.jpg", "coffee.webp", "coins.png",
               "hubble_deep_field.jpg", "rocket.jpg"]
LATIN_FONTS = [
    "dejavu/DejaVuSans.ttf", "dejavu/DejaVuSans-Bold.ttf", "dejavu/DejaVuSerif.ttf",
    "dejavu/DejaVuSansMono.ttf", "dejavu/DejaVuSansCondensed-Oblique.ttf",
    "liberation/LiberationSans-Regular.ttf", "liberation/LiberationSerif-Bold.ttf",
    "liberation/LiberationSansNarrow-Regular.ttf", "liberation/LiberationMono-Bold.ttf",
]
CJK_FONTS = ["/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
             "/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc"]
WORDS = [
    "invoice", "receipt", "total", "coffee", "menu", "platform", "exit", "entrance", "bakery",
    "open", "daily", "closed", "parking", "station", "welcome", "pharmacy", "hotel",
    "restaurant", "museum", "library", "garden", "market", "street", "avenue", "airport",
    "terminal", "departure", "arrival", "ticket", "office", "tuesday", "friday", "sunday",
    "january", "october", "breakfast", "dinner", "lunch", "pizza", "burger", "sandwich",
    "chocolate", "vanilla", "strawberry", "lemon", "warning", "danger", "caution", "private",
    "police", "school", "hospital", "university", "bridge", "harbour", "beach", "mountain",
    "river", "north", "south", "east", "west", "left", "right", "limit", "speed", "stop",
    "delivery", "pickup", "order", "number", "account", "payment", "balance", "amount",
    "discount", "special", "offer", "today", "tomorrow", "minutes", "hours", "gate", "floor",
    "level", "room", "kitchen", "bathroom", "office", "meeting", "agenda", "project",
    "deadline", "budget", "quarterly", "report", "summary", "error", "warning", "failed",
    "network", "server", "connection", "password", "settings", "update", "download", "upload",
    "battery", "charging", "wireless", "printer", "scanner", "happy", "birthday",
    "congratulations", "wedding", "holiday", "vacation", "summer", "winter", "spring",
    "autumn",
]
ACCENTED = [
    "café", "crème", "pâtisserie", "entrée", "fenêtre", "château", "garçon", "naïve", "façade",
    "über", "straße", "bäckerei", "größe", "müller", "ausgang", "öffnungszeiten", "señor",
    "niño", "mañana", "jalapeño",
]
CHINESE = [
    "出口", "入口", "欢迎光临", "营业时间", "禁止吸烟", "火车站", "银行", "超市", "停车场",
    "咖啡", "菜单", "发票", "餐厅", "地铁站", "医院", "图书馆", "请勿停车", "安全出口", "北京",
    "上海", "东京", "售票处", "候车室", "洗手间", "药店", "酒店", "面包店", "博物馆", "公园",
    "学校", "邮局", "机场", "出发", "到达", "今日特价", "早餐", "午餐", "晚餐", "收据", "合计",
]
KANA = [
    "ありがとう", "いらっしゃいませ", "カフェ", "ラーメン", "さくら", "とうきょう", "コンビニ",
    "おにぎり", "タクシー", "ようこそ", "でぐち", "きっぷうりば", "ホテル", "レストラン",
    "トイレ", "すし", "てんぷら", "パン", "メニュー", "おかえり",
]
HEIGHTS = [8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64]  # ink height, processed pixels
BINS = [(0, 12), (12, 16), (16, 24), (24, 32), (32, 48), (48, 10_000)]
SIGN_COLOURS = [((250, 250, 245), (20, 20, 20)), ((250, 210, 40), (10, 10, 10)),
                ((20, 110, 60), (255, 255, 255)), ((25, 60, 150), (255, 255, 255)),
                ((190, 30, 30), (255, 255, 255)), ((15, 15, 15), (250, 220, 60))]


@dataclass
class Photo:
    name: str
    kind: str  # "text", "kana" or "plain" (no text)
    phrases: list[str]
    query: str
    height: float  # the query line's ink height in the processed image
    style: str
    lang: str


# ---------------------------------------------------------------- generating the photos


def background(rng: random.Random) -> Image.Image:
    """A crop of a real photo (a random part, flipped or not, colours shifted a little)."""
    with Image.open(ROOT / "examples" / "images" / rng.choice(BACKGROUNDS)) as source:
        image = source.convert("RGB")
    w, h = image.size
    crop_w = rng.uniform(0.45, 1.0) * w
    crop_h = min(h, crop_w * CANVAS[1] / CANVAS[0])
    left, top = rng.uniform(0, w - crop_w), rng.uniform(0, h - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize(CANVAS, Image.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gain = np.array([rng.uniform(0.8, 1.2) for _ in range(3)])
    return Image.fromarray(np.clip(np.asarray(image) * gain, 0, 255).astype(np.uint8))


def phrase_for(rng: random.Random, lang: str) -> str:
    if lang == "zh":
        return "".join(rng.sample(CHINESE, rng.choice([1, 1, 2])))
    if lang == "ja":
        return rng.choice(KANA)
    pool = ACCENTED if lang == "accented" else WORDS
    words = [rng.choice(pool) for _ in range(rng.choice([1, 2, 2, 3]))]
    if rng.random() < 0.3:
        words.append(str(rng.randint(2, 9999)))
    if rng.random() < 0.5:
        words = [w.upper() for w in words]
    elif rng.random() < 0.5:
        words = [w.capitalize() for w in words]
    return " ".join(words)


def font_for(rng: random.Random, lang: str, ink: float, phrase: str) -> ImageFont.FreeTypeFont:
    """A font whose ink height for `phrase` is about `ink` canvas pixels."""
    cjk = lang in ("zh", "ja") or rng.random() < 0.1
    path = rng.choice(CJK_FONTS) if cjk else "/usr/share/fonts/truetype/" + rng.choice(LATIN_FONTS)
    size = max(6, round(ink * 1.3))
    for _ in range(4):
        font = ImageFont.truetype(path, size)
        left, top, right, bottom = font.getbbox(phrase)
        size = max(6, round(size * ink / max(1, bottom - top)))
    return ImageFont.truetype(path, size)


def text_layer(phrase: str, font: ImageFont.FreeTypeFont, style: str,
               rng: random.Random) -> Image.Image:
    """The text on a transparent layer: on a sign (a coloured panel), on paper, or alone with
    an outline (on the photo)."""
    left, top, right, bottom = font.getbbox(phrase)
    pad = max(4, (bottom - top) // 2)
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if style == "sign":
        panel, ink = rng.choice(SIGN_COLOURS)
        draw.rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), radius=pad // 2, fill=panel)
        draw.text((pad - left, pad - top), phrase, font=font, fill=ink)
    elif style == "plain":
        ink = rng.choice([(20, 20, 20), (30, 30, 120), (120, 20, 20)])
        draw.text((pad - left, pad - top), phrase, font=font, fill=ink)
    else:
        ink, edge = rng.choice([((255, 255, 255), (0, 0, 0)), ((10, 10, 10), (255, 255, 255))])
        stroke = max(1, (bottom - top) // 14)
        draw.text((pad - left, pad - top), phrase, font=font, fill=ink, stroke_width=stroke,
                  stroke_fill=edge)
    return layer


def warped(layer: Image.Image, rng: random.Random) -> Image.Image:
    """Turned up to 15 degrees either way, then seen in perspective (corners moved up to 12%
    of the layer's height and 6% of its width)."""
    w, h = layer.size
    margin_x, margin_y = round(0.08 * w), round(0.15 * h)
    padded = Image.new("RGBA", (w + 2 * margin_x, h + 2 * margin_y), (0, 0, 0, 0))
    padded.paste(layer, (margin_x, margin_y))
    jitter = [rng.uniform(-0.06, 0.06) * w if i % 2 == 0 else rng.uniform(-0.12, 0.12) * h
              for i in range(8)]
    corners = [(margin_x, margin_y), (margin_x + w, margin_y), (margin_x + w, margin_y + h),
               (margin_x, margin_y + h)]
    moved = [(x + jitter[2 * i], y + jitter[2 * i + 1]) for i, (x, y) in enumerate(corners)]
    seen = padded.transform(padded.size, Image.Transform.PERSPECTIVE,
                            perspective(corners, moved), resample=Image.BICUBIC)
    turned = seen.rotate(rng.uniform(-15, 15), resample=Image.BICUBIC, expand=True)
    return turned.crop(turned.getbbox())


def perspective(source: list[tuple[float, float]], target: list[tuple[float, float]]) -> list:
    """Pillow's PERSPECTIVE coefficients mapping `target` points back to `source`."""
    rows = []
    for (x, y), (u, v) in zip(target, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    a = np.array(rows, dtype=float)
    b = np.array([c for point in source for c in point], dtype=float)
    return list(np.linalg.solve(a, b))


def make_photo(index: int, kind: str, rng: random.Random) -> tuple[Photo, bytes]:
    """One photo as JPEG bytes (as a camera would hand it over) and what it shows."""
    style = rng.choice(["sign", "sign", "plain", "overlay"])
    if kind == "plain":
        style = "none"
    canvas = background(rng)
    if style == "plain":  # paper, a whiteboard, a screen: a flat colour with some noise
        tint = np.array([rng.randint(-10, 10) for _ in range(3)])
        tone = np.array([rng.randint(200, 250)] * 3) + tint
        noise = np.random.default_rng(index).normal(0, 4, (CANVAS[1], CANVAS[0], 3))
        canvas = Image.fromarray(np.clip(tone + noise, 0, 255).astype(np.uint8))
    phrases, height = [], 0.0
    lang = "none"
    if kind != "plain":
        lang = "ja" if kind == "kana" else rng.choice(["en"] * 6 + ["accented", "zh", "zh"])
        lines = 2 if rng.random() < 0.3 else 1
        for line in range(lines):
            phrase = phrase_for(rng, lang if line == 0 else rng.choice(["en", lang]))
            ink = rng.choice(HEIGHTS) * SCALE if line == 0 else rng.choice(HEIGHTS[4:]) * SCALE
            font = font_for(rng, lang, ink, phrase)
            layer = warped(text_layer(phrase, font, style, rng), rng)
            if layer.width >= CANVAS[0] or layer.height >= CANVAS[1]:
                layer.thumbnail((CANVAS[0] - 20, CANVAS[1] - 20))
                ink *= min(1.0, (CANVAS[0] - 20) / layer.width)
            band = CANVAS[1] // lines
            x = rng.randint(0, CANVAS[0] - layer.width)
            y = line * band + rng.randint(0, max(0, band - layer.height))
            canvas.paste(layer, (x, min(y, CANVAS[1] - layer.height)), layer)
            phrases.append(phrase)
            if line == 0:
                height = ink / SCALE
    if rng.random() < 0.6:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 2.4)))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=rng.randint(35, 95))
    query = query_for(phrases[0], rng) if phrases else ""
    return Photo(f"{kind}-{index:04d}", kind, phrases, query, height, style, lang), out.getvalue()


def query_for(phrase: str, rng: random.Random) -> str:
    """One word of the phrase (one of its longer ones where it has any)."""
    words = phrase.split()
    longer = [w for w in words if len(w) >= 4 and not w.isdigit()]
    return rng.choice(longer or words)


def photos(counts: dict[str, int], folder: Path) -> list[tuple[Photo, Image.Image]]:
    """The bench's photos, made once (seeded) and kept under bench/_data."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for kind, count in counts.items():
        for index in range(count):
            rng = random.Random(f"{kind}-{index}")
            path = folder / f"{kind}-{index:04d}.jpg"
            meta = path.with_suffix(".json")
            if path.exists() and meta.exists():
                photo = Photo(**json.loads(meta.read_text()))
                data = path.read_bytes()
            else:
                photo, data = make_photo(index, kind, rng)
                path.write_bytes(data)
                meta.write_text(json.dumps(asdict(photo), ensure_ascii=False))
            made.append((photo, prepare_bytes(data, PROCESSED)))
    return made


# ---------------------------------------------------------------- reading and ranking


class WithClassifier(TextReader):
    """PaddleOCR's direction classifier between detection and recognition: a line it finds
    upside down (180 degrees, above 0.9 sure) is turned before it is read."""

    def load(self) -> None:
        super().load()
        from image_search.models.onnx_runtime import open_session

        folder = models_folder()
        assert folder is not None
        self._classifier = open_session(
            folder / "ch_ppocr_mobile_v2.0_cls_infer.onnx", "cpu", threads=self.threads
        )

    def _recognise(self, crops):  # type: ignore[no-untyped-def]
        name = self._classifier.get_inputs()[0].name
        turned = []
        for crop in crops:
            tensor = line_tensor(crop, 192)[np.newaxis]
            chances = self._classifier.run(None, {name: tensor})[0][0]
            turned.append(np.rot90(crop, 2) if chances[1] > 0.9 else crop)
        return super()._recognise(turned)


def read_all(reader: TextReader, made: list[tuple[Photo, Image.Image]]) -> tuple[dict, dict]:
    texts, seconds = {}, {}
    reader.read(made[0][1])  # graphs loaded and warmed
    for photo, image in made:
        started = time.perf_counter()
        lines = reader.read(image)
        seconds[photo.name] = time.perf_counter() - started
        texts[photo.name] = [line.text for line in lines]
    return texts, seconds


def rank_of(photo: Photo, ranking: list[str], truth: dict[str, str]) -> int | None:
    """The photo's rank among the results, other photos that truly hold the query set aside
    (they are right answers too); None when it is not returned."""
    wanted = normalise(photo.query)
    rank = 0
    for name in ranking:
        if name == photo.name:
            return rank + 1
        if wanted not in truth[name]:
            rank += 1
    return None


def evaluate(made: list[tuple[Photo, Image.Image]], texts: dict[str, list[str]]) -> dict:
    truth = {p.name: normalise(" ".join(p.phrases)) for p, _ in made}
    searched = {name: normalise(" ".join(lines)) for name, lines in texts.items()}
    kinds = {p.name: p.kind for p, _ in made}
    results = []
    for photo, _ in made:
        if photo.kind == "plain":
            continue
        ranking = [name for name, _ in rank_texts(photo.query, searched)]
        rank = rank_of(photo, ranking, truth)
        textless_top5 = sum(1 for name in ranking[:5] if kinds[name] == "plain")
        returned = (len(ranking), sum(1 for name in ranking if kinds[name] == "plain"))
        results.append((photo, rank, textless_top5, returned))
    return {"results": results, "read_any": {n: bool(t) for n, t in searched.items()}}


def report(name: str, made, texts, seconds, evaluation) -> None:
    results = evaluation["results"]
    print(f"\n== {name}")
    latin_cjk = [r for r in results if r[0].kind == "text"]
    print(f"{'text height px':>15} {'photos':>7} {'recall@1':>9} {'recall@5':>9} {'MRR':>6}")
    for low, high in BINS:
        chosen = [r for r in latin_cjk if low <= r[0].height < high]
        print(f"{f'{low}-{high}' if high < 10_000 else f'>={low}':>15} {len(chosen):7d} "
              + figures(chosen))
    big = [r for r in latin_cjk if r[0].height >= 24]
    print(f"{'all':>15} {len(latin_cjk):7d} " + figures(latin_cjk))
    print(f"{'>=24':>15} {len(big):7d} " + figures(big))
    for lang in ("en", "accented", "zh"):
        chosen = [r for r in big if r[0].lang == lang]
        print(f"{'>=24 ' + lang:>15} {len(chosen):7d} " + figures(chosen))
    for style in ("sign", "plain", "overlay"):
        chosen = [r for r in big if r[0].style == style]
        print(f"{'>=24 ' + style:>15} {len(chosen):7d} " + figures(chosen))
    kana = [r for r in results if r[0].kind == "kana"]
    if kana:
        print(f"{'kana (all)':>15} {len(kana):7d} " + figures(kana))
        examples = [(r[0].phrases[0], texts[r[0].name]) for r in kana[:6]]
        print("  kana read as:", "; ".join(f"{p} -> {' / '.join(t) or '(nothing)'}"
                                          for p, t in examples))
    long_queries = [r for r in results if len(normalise(r[0].query)) >= 4]
    polluted = sum(1 for r in long_queries if r[2])
    plain = [p.name for p, _ in made if p.kind == "plain"]
    spurious = sum(1 for n in plain if evaluation["read_any"][n])
    print(f"queries >= 4 characters with a photo without text in their top 5: {polluted} of "
          f"{len(long_queries)}")
    returned = sum(r[3][0] for r in results)
    print(f"photos without text among all results of all queries: {sum(r[3][1] for r in results)}"
          f" of {returned}")
    print(f"photos without text where some text was read: {spurious} of {len(plain)}")
    if seconds:
        with_text = [seconds[p.name] for p, _ in made if p.kind != "plain"]
        without = [seconds[p.name] for p, _ in made if p.kind == "plain"]
        print(f"OCR seconds per photo (median): with text {statistics.median(with_text):.3f}, "
              f"without {statistics.median(without):.3f}; cores {cores()}")
    r5 = recall(big, 5)
    print(f"target recall@5 >= 0.90 for text >= 24 px ({r5:.3f}): "
          f"{'met' if r5 >= 0.9 else 'NOT met'}; no photo without text in a top 5 "
          f"({polluted}): {'met' if polluted == 0 else 'NOT met'}")


def recall(results: list, k: int) -> float:
    return sum(1 for r in results if r[1] is not None and r[1] <= k) / max(1, len(results))


def figures(results: list) -> str:
    mrr = sum(1 / r[1] for r in results if r[1]) / max(1, len(results))
    return f"{recall(results, 1):9.3f} {recall(results, 5):9.3f} {mrr:6.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=int, default=560, help="photos with Latin or CJK text")
    parser.add_argument("--plain", type=int, default=220, help="photos without text")
    parser.add_argument("--kana", type=int, default=60, help="photos with Japanese kana")
    parser.add_argument("--variants", default="default,det640,classifier")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime's threads")
    parser.add_argument(
        "--from-cache", action="store_true",
        help="rank what an earlier run read (bench/_data/ocr-quality-VARIANT.json); no timings",
    )
    args = parser.parse_args()
    if not Path(CJK_FONTS[0]).exists():
        raise SystemExit("needs Debian's CJK fonts: apt-get install fonts-noto-cjk")
    made = photos({"text": args.text, "plain": args.plain, "kana": args.kana},
                  DATA / "ocr-quality")
    print(f"photos: {args.text} with text, {args.kana} with kana, {args.plain} without; "
          f"processed {PROCESSED.width}x{PROCESSED.height}")
    readers = {
        "default": lambda: TextReader(args.threads),
        "det640": lambda: TextReader(args.threads, detect_side=640),
        "classifier": lambda: WithClassifier(args.threads),
    }
    for name in args.variants.split(","):
        cache = DATA / f"ocr-quality-{name}.json"
        if args.from_cache:
            texts, seconds = json.loads(cache.read_text()), {}
        else:
            texts, seconds = read_all(readers[name](), made)
            cache.write_text(json.dumps(texts, ensure_ascii=False, indent=0))
        label = f"{name} (detector at {640 if name == 'det640' else DETECT_SIDE} px)"
        report(label, made, texts, seconds, evaluate(made, texts))


if __name__ == "__main__":
    main()
