"""Contact sheets: the query photo beside its results, each labelled with score and item."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from search.store import Hit

TILE = 160
LABEL = 34
COLUMNS = 5


def _tile(path, lines: list[str], accent: str, box=None) -> Image.Image:
    """A photo's thumbnail with its label lines; `box` (x1, y1, x2, y2 in the photo's
    pixels), when given, outlined on it."""
    tile = Image.new("RGB", (TILE, TILE + LABEL), "white")
    try:
        with Image.open(path) as img:
            upright = ImageOps.exif_transpose(img).convert("RGB")
            thumb = ImageOps.contain(upright, (TILE, TILE))
        left, top = (TILE - thumb.width) // 2, (TILE - thumb.height) // 2
        tile.paste(thumb, (left, top))
        if box is not None:
            scale = thumb.width / upright.width
            x1, y1, x2, y2 = (v * scale for v in box)
            outline = (left + x1, top + y1, left + x2, top + y2)
            ImageDraw.Draw(tile).rectangle(outline, outline="orange", width=3)
    except Exception:  # a missing or unreadable file still gets its labelled tile
        ImageDraw.Draw(tile).text((8, TILE // 2), "image not found", fill="grey")
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, TILE - 1, TILE + LABEL - 1), outline=accent, width=3)
    for n, line in enumerate(lines):
        draw.text((4, TILE + 2 + 15 * n), line[:26], fill="black")
    return tile


def write_sheet(
    out: str | Path,
    query,
    query_name: str,
    hits: list[Hit],
    photos: list,
    query_item: str | None = None,
    garment=None,
) -> Path:
    """Query tile first (blue; the `garment` searched, an embedder.boxes.Garment, outlined in
    orange and named), then results in rank order, COLUMNS per row; when the query's
    item is known (a dataset photo), results of that item are outlined in green. `query` and
    `photos` (one per hit, None where it cannot be read) are what Pillow opens: paths or
    file objects."""
    title = f"query: {garment.type} {garment.score:.2f}" if garment else "query"
    tiles = [_tile(query, [title, query_name], "royalblue", garment and garment.box)]
    for rank, (hit, photo) in enumerate(zip(hits, photos, strict=True), 1):
        tiles.append(
            _tile(
                photo,
                [
                    f"#{rank} {hit.score:.3f} {hit.payload.get('source', '')}",
                    f"{hit.payload.get('item_id', '?')}",
                ],
                "limegreen"
                if query_item and hit.payload.get("item_id") == query_item
                else "lightgrey",
            )
        )
    rows = (len(tiles) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * (TILE + LABEL)), "white")
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % COLUMNS) * TILE, (n // COLUMNS) * (TILE + LABEL)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def write_sheets(path: Path, answers, service) -> list[Path]:
    """A contact sheet per answer (a search service's): `path` for one answer, NAME-1.png,
    NAME-2.png, ... for several. The query photo of "more like this" is the stored one."""
    written = []
    for n, answer in enumerate(answers, 1):
        out = path if len(answers) == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        hits = [r.hit for r in answer.results]
        shown = service.photo_source(answer.shown) if answer.shown else None
        query = shown or answer.query
        name = Path(str(answer.query or answer.shown)).name
        photos = [service.photo_source(hit.id) for hit in hits]
        write_sheet(out, query, name, hits, photos, answer.item_id, answer.garment)
        written.append(out)
    return written
