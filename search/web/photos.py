"""The photos the app serves: a file's bytes (checked to be an image of a served format) or
its JPEG thumbnail, kept in a cache bounded in bytes (what it holds, not how many)."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from search.service import PhotoFile
from search.web.deps import Unsupported

MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
CACHE_BYTES = 64_000_000  # photos and thumbnails kept in memory, at most
MAX_PHOTO_BYTES = 50_000_000  # a stored file larger than this is not served


def read_photo(data: bytes, size: int | None) -> tuple[bytes, str]:
    """(bytes, media type) of a photo file's bytes, or of its JPEG thumbnail (longest side
    `size`); Unsupported when the file is not an image of a served format."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from embedder.transforms import IMAGE_FORMATS

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            kind = MEDIA_TYPES[img.format]
            if size is None:
                img.verify()
                return data, kind
            img.draft("RGB", (size, size))
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((size, size))
            out = io.BytesIO()
            img.save(out, "JPEG", quality=85)
            return out.getvalue(), "image/jpeg"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise Unsupported("The stored file of this photo is not an image.") from None


class PhotoCache:
    """read_photo's answers, least recently used first out once they hold more than
    `capacity` bytes; keyed by the file's path, thumbnail size, change stamp and length (a
    changed file is read again). One larger than a tenth of the capacity is served but not
    kept; a file above MAX_PHOTO_BYTES is not read at all (memory per request is bounded)."""

    def __init__(self, capacity: int = CACHE_BYTES):
        self.capacity, self.held = capacity, 0
        self._entries: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, photo: PhotoFile, size: int | None) -> tuple[bytes, str]:
        if photo.size > MAX_PHOTO_BYTES:
            raise Unsupported(
                f"The stored file of this photo is over {MAX_PHOTO_BYTES // 10**6} MB."
            )
        key = (photo.storage.url(photo.path), size, photo.changed, photo.size)
        with self._lock:
            if (found := self._entries.get(key)) is not None:
                self._entries.move_to_end(key)
                return found
        found = read_photo(photo.read(), size)
        if len(found[0]) <= self.capacity // 10:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = found
                    self.held += len(found[0])
                while self.held > self.capacity:
                    _, (data, _) = self._entries.popitem(last=False)
                    self.held -= len(data)
        return found

    def __len__(self) -> int:
        return len(self._entries)
