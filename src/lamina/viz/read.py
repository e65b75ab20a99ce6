"""Pictures of a reader's work: each word's polygon with its transcript drawn over the image."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lamina.engine.checkpoint import atomic_write

FOUND, TRUTH = (0, 200, 255), (60, 220, 60)


def _label_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def draw_words(image: Image.Image, words: list[dict], truth: list[dict] | None = None) -> Image.Image:
    """The image (RGB) with each word's polygon and transcript drawn: words found in blue, the truth's
    polygons in green underneath when given. Transcripts are written on a dark band above each word so
    they read on any background. words: [{'polygon': [[x, y] x 4], 'text'}]."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out, "RGBA")
    font = _label_font(max(10, min(out.size) // 40))
    for w in truth or []:
        draw.polygon([tuple(p) for p in w["polygon"]], outline=TRUTH + (255,), width=1)
    for w in words:
        points = [tuple(p) for p in w["polygon"]]
        draw.polygon(points, outline=FOUND + (255,), width=2)
        text = w.get("text")
        if text:
            x, y = min(p[0] for p in points), min(p[1] for p in points)
            left, top, right, bottom = draw.textbbox((x, y), text, font=font, anchor="lb")
            draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0, 170))
            draw.text((x, y), text, font=font, fill=(255, 255, 255, 255), anchor="lb")
    return out


def save_png(image: Image.Image, path: Path) -> Path:
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))
    return Path(path)


def gallery(pictures: list[Image.Image], path: Path, columns: int = 4) -> Path:
    """Pictures side by side, `columns` to a row, each scaled to the first one's height."""
    if not pictures:
        raise ValueError("no pictures")
    side = pictures[0].height
    scaled = [p.resize((max(1, round(p.width * side / p.height)), side)) for p in pictures]
    width = max(sum(p.width for p in scaled[i : i + columns]) for i in range(0, len(scaled), columns))
    rows = -(-len(scaled) // columns)
    sheet = Image.new("RGB", (width, rows * side), "white")
    for i, p in enumerate(scaled):
        x = sum(q.width for q in scaled[i - i % columns : i])
        sheet.paste(p, (x, (i // columns) * side))
    return save_png(sheet, path)
