import os
import shutil

import pandas as pd
import pytest
from PIL import Image

from embedder.catalog import CatalogError, read_catalog, read_pairs


def test_catalog_reads_every_image_with_labels_splits_and_boxes(sample_root):
    table = read_catalog(sample_root)
    files = sorted(p.relative_to(sample_root).as_posix() for p in sample_root.rglob("*.jpg"))
    assert sorted(table["path"]) == files
    assert set(table["category"]) == {"DRESSES", "TOPS", "TROUSERS"}
    assert set(table["source"]) == {"consumer", "shop"}  # "comsumer_NN.jpg" is a consumer photo
    consumer = table[table["path"].str.contains("/comsumer_")]
    assert (consumer["source"] == "consumer").all()
    assert set(table["split"]) <= {"train", "val", "test"}
    assert table["x1"].notna().all() and (table["x2"] > table["x1"]).all()
    row = table.iloc[0]
    assert row["path"].split("/")[1:4] == [row["category"], row["subcategory"], row["item_id"]]
    pairs = read_pairs(sample_root)
    assert set(pairs["consumer"]) == set(consumer["path"])
    folder = {side: pairs[side].str.split("/") for side in ("consumer", "shop")}
    for part in (1, 3):  # the same category and item folder; the subcategory may differ
        assert (folder["consumer"].str[part] == folder["shop"].str[part]).all()
    assert (folder["consumer"].str[3] == pairs["item_id"]).all()


def test_catalog_accepts_the_img_folder_itself(sample_root):
    assert read_catalog(sample_root / "img").equals(read_catalog(sample_root))


def test_catalog_without_anno_and_eval(sample_root, tmp_path):
    shutil.copytree(sample_root / "img", tmp_path / "bare" / "img")
    table = read_catalog(tmp_path / "bare")
    assert len(table) == len(read_catalog(sample_root))
    assert (table["split"] == "unknown").all()
    assert table["x1"].isna().all()
    assert read_pairs(tmp_path / "bare").empty


def test_catalog_of_any_image_folder(tmp_path):
    for rel in ("TOPS/Tees/a.png", "TOPS/b.jpg", "loose.jpeg", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            (tmp_path / rel).write_text("not an image")
        else:
            Image.new("RGB", (8, 8)).save(tmp_path / rel)
    table = read_catalog(tmp_path).set_index("path")
    assert list(table.index) == ["TOPS/Tees/a.png", "TOPS/b.jpg", "loose.jpeg"]
    assert table.loc["TOPS/Tees/a.png", ["category", "subcategory"]].tolist() == ["TOPS", "Tees"]
    assert table.loc["TOPS/b.jpg", "category"] == "TOPS"
    assert table.loc["loose.jpeg", "category"] == "unknown"
    assert pd.isna(table.loc["loose.jpeg", "x1"])


def test_catalog_tolerates_malformed_list_files(sample_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(sample_root, root)
    (root / "Anno" / "list_bbox_consumer2shop.txt").write_text("3\nheader\nimg/x.jpg 1 2 a b\n")
    (root / "Eval" / "list_eval_partition.txt").write_text("garbage\n")
    table = read_catalog(root)
    assert len(table) == len(read_catalog(sample_root)) and table["x1"].isna().all()


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_catalog_rejects_bad_roots(tmp_path, make):
    target = tmp_path / "root"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    with pytest.raises(CatalogError):
        read_catalog(target)


# the fast catalog against the obvious one (the walk and the lookups of the first version) -----
def slow_catalog(root) -> pd.DataFrame:
    """A row per image, the slow, obvious way: relpath per file, a dict lookup per file."""
    import math
    import os
    from pathlib import Path

    from embedder import catalog as c

    def read_table(path, min_fields):
        if not path.is_file():
            return []
        rows = []
        with path.open(encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh):
                fields = line.split()
                if number < 2 and (len(fields) <= 1 or not fields[0].startswith("img/")):
                    continue
                if len(fields) >= min_fields:
                    rows.append(fields)
        return rows

    where = c.locate(root)
    found, stack = [], [str(where.images)]
    while stack:
        folder = stack.pop()
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
        subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        found += [
            e
            for e in entries
            if not e.is_dir(follow_symlinks=False)
            and not e.name.startswith("._")
            and Path(e.name).suffix.lower() in c.IMAGE_SUFFIXES
        ]
        stack.extend(reversed(subdirs))
    splits = {}
    for consumer, shop, _item, status, *_ in read_table(Path(where.lists) / c.EVAL_FILE, 4):
        splits.setdefault(consumer, status)
        splits.setdefault(shop, status)
    boxes = {}
    for fields in read_table(Path(where.lists) / c.BBOX_FILE, 7):
        try:
            values = [float(v) for v in fields[3:7]]
        except ValueError:
            continue
        if all(math.isfinite(v) and abs(v) <= c.MAX_COORDINATE for v in values):
            kind = int(fields[1]) if fields[1] in ("1", "2", "3") else None
            boxes[fields[0]] = (*(int(v) for v in values), kind)
    records = []
    for entry in found:
        parts = tuple(os.path.relpath(entry.path, where.images).split(os.sep))
        path = where.prefix + "/".join(parts)
        try:
            stat = entry.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        name = parts[-1].lower()
        source = (
            "consumer"
            if name.startswith(("comsumer", "consumer"))
            else "shop"
            if name.startswith("shop")
            else "unknown"
        )
        records.append(
            (
                path,
                *c._labels(list(parts[:-1])),
                source,
                splits.get(path, "unknown"),
                *boxes.get(path, (None,) * 5),
                size,
                mtime,
            )
        )
    table = pd.DataFrame.from_records(records, columns=c.COLUMNS)
    table = table.sort_values("path", ignore_index=True)
    for col in ("x1", "y1", "x2", "y2"):
        table[col] = table[col].astype("Int64")
    table["clothes_type"] = table["clothes_type"].astype("Int8")
    for col in ("path", "category", "subcategory", "item_id", "source", "split"):
        table[col] = table[col].astype(c.TEXT)
    return table


def _odd_tree(base) -> None:
    """Names with spaces, a newline, unicode; a symlinked file, a broken link and a symlinked
    folder; `._*` files; files of other kinds; odd Anno lines."""
    import os

    img = base / "Img" / "img"
    for rel in (
        "TOPS/Tees/id_00000001/shop 01.jpg",
        "TOPS/Tees/id_00000001/comsumer_\n02.JPG",
        "TOPS/Tees/id_00000001/Consumer_03.jpeg",
        "DRESSES/Robe_été/id_00000002/shop_01.png",
        "DRESSES/Robe_été/id_00000002/.hidden.jpg",
        "TROUSERS/id_00000003/shop_01.webp",
        "loose.bmp",
        "TOPS/Summer_Wear/id_00000001/shop_02.jpg",
    ):
        (img / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (9, 7)).save(
            img / rel, format=rel.rsplit(".", 1)[1].upper().replace("JPG", "JPEG")
        )
    (img / "TOPS/Tees/id_00000001/._shop 01.jpg").write_bytes(b"\x00\x05\x16\x07")
    (img / "TOPS/Tees/id_00000001/notes.txt").write_text("no image")
    (img / "TOPS/Tees/id_00000001/no_suffix").write_text("no image")
    os.symlink(img / "loose.bmp", img / "TOPS/Tees/id_00000001/link.bmp")
    os.symlink(img / "gone.jpg", img / "TOPS/Tees/id_00000001/broken.jpg")
    os.symlink(img / "TOPS", img / "DRESSES/linked_folder")
    (base / "Anno").mkdir()
    (base / "Anno" / "list_bbox_consumer2shop.txt").write_text(
        "4\nimage_name clothes_type source_type x_1 y_1 x_2 y_2\n"
        "img/TOPS/Tees/id_00000001/shop 01.jpg 1 1 1 1 9 7\n"  # a space in the name: skipped
        "img/TOPS/Summer_Wear/id_00000001/shop_02.jpg 1 1 1 1 10 8\n"
        "img/TOPS/Summer_Wear/id_00000001/shop_02.jpg 1 1 2 2 9 7\n"  # the last one wins
        "img/DRESSES/Robe_été/id_00000002/shop_01.png 3 1 inf 0 5 5\n"
        "img/loose.bmp 3 1 -99999.7 1e400 2 3\n"
        "img/TROUSERS/id_00000003/shop_01.webp 2 1 3.9 -3.9 8 6 extra fields\n"
        "img/TOPS/Tees/id_00000001/link.bmp 1 1 2\n"  # too short: skipped
    )
    (base / "Eval").mkdir()
    (base / "Eval" / "list_eval_partition.txt").write_text(
        "3\nimage_pair_name_1 image_pair_name_2 item_id evaluation_status\n"
        "img/TOPS/Tees/id_00000001/Consumer_03.jpeg img/TOPS/Summer_Wear/id_00000001/shop_02.jpg"
        " id_00000001 train\n"
        "img/TOPS/Tees/id_00000001/Consumer_03.jpeg img/TOPS/Tees/id_00000001/shop 01.jpg"
        " id_00000001 test\n"  # the name with a space: the line has too many fields
        "img/TOPS/Tees/id_00000001/link.bmp img/TOPS/Summer_Wear/id_00000001/shop_02.jpg"
        " id_00000001 val\n"  # the first pair's split wins for shop_02
    )


@pytest.mark.parametrize("tree", ["sample", "odd"])
def test_the_fast_catalog_is_the_slow_one(sample_root, tmp_path, tree):
    root = sample_root if tree == "sample" else tmp_path / "odd"
    if tree == "odd":
        _odd_tree(root)
    fast, slow = read_catalog(root), slow_catalog(root)
    pd.testing.assert_frame_equal(fast, slow)
    if tree == "odd":
        assert "img/TOPS/Tees/id_00000001/comsumer_\n02.JPG" in set(fast["path"])
        assert (fast.loc[fast["path"].str.endswith("broken.jpg"), "size"] == -1).all()
        boxed = fast.set_index("path").loc["img/TOPS/Summer_Wear/id_00000001/shop_02.jpg"]
        assert list(boxed[["x1", "y1", "x2", "y2"]]) == [2, 2, 9, 7] and boxed.split == "train"
        extra = fast.set_index("path").loc["img/TROUSERS/id_00000003/shop_01.webp"]
        assert list(extra[["x1", "y1", "x2", "y2"]]) == [3, -3, 8, 6]
        assert set(fast["split"]) == {"train", "val", "unknown"}


def test_the_img_folder_nested_in_Img_keeps_its_list_files(sample_root, tmp_path):
    from embedder.catalog import locate

    root = tmp_path / "ds"
    shutil.copytree(sample_root / "img", root / "Img" / "img")
    for lists in ("Anno", "Eval"):
        shutil.copytree(sample_root / lists, root / lists)
    nested, flat = read_catalog(root), read_catalog(sample_root)
    columns = ["path", "category", "item_id", "split", "x1", "y1", "x2", "y2"]
    pd.testing.assert_frame_equal(nested[columns], flat[columns])  # paths read "img/..."
    assert read_catalog(root / "Img" / "img")[columns].equals(flat[columns])
    assert all(os.path.isfile(locate(root).file(p)) for p in nested["path"])


# the list files' cache: reused while the tree and their bytes are the same --------------------
def _cache_file(root):
    from embedder.catalog import _annotations_file, locate

    return _annotations_file(locate(root))


def test_a_second_read_reuses_what_the_list_files_gave_and_sees_every_change(
    sample_root, tmp_path
):
    root = tmp_path / "ds"
    shutil.copytree(sample_root, root)
    first = read_catalog(root)
    kept = _cache_file(root)
    assert kept.is_file()
    stamp = kept.stat().st_mtime_ns
    pd.testing.assert_frame_equal(read_catalog(root), first)
    assert kept.stat().st_mtime_ns == stamp  # reused, not rewritten
    # a garment type changed in place, the file's size and mtime kept: its bytes decide
    bbox = root / "Anno" / "list_bbox_consumer2shop.txt"
    before = bbox.stat()
    lines = bbox.read_text().splitlines(keepends=True)
    path, kind, rest = lines[2].split(" ", 2)
    other = int(kind) % 3 + 1
    lines[2] = f"{path} {other} {rest}"
    bbox.write_text("".join(lines))
    os.utime(bbox, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert bbox.stat().st_size == before.st_size
    changed = read_catalog(root)
    assert changed.set_index("path").loc[path, "clothes_type"] == other != int(kind)
    pd.testing.assert_frame_equal(changed, slow_catalog(root))
    # a photo added, one removed, one rewritten: the walk says so, sizes and mtimes are today's
    photos = sorted((root / "img").rglob("*.jpg"))
    shutil.copy(photos[0], photos[0].with_name("shop_99.jpg"))
    photos[1].unlink()
    Image.new("RGB", (31, 17)).save(photos[2])
    pd.testing.assert_frame_equal(read_catalog(root), slow_catalog(root))
    # a garbled cache file is rebuilt
    kept.write_bytes(b"not a cache")
    pd.testing.assert_frame_equal(read_catalog(root), slow_catalog(root))
    assert kept.stat().st_size > 1000


def test_the_catalog_is_read_whole_where_no_cache_can_be_written(
    sample_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("FASHION_RETRIEVAL_CACHE", "/dev/null/cache")
    pd.testing.assert_frame_equal(read_catalog(sample_root), slow_catalog(sample_root))
    pd.testing.assert_frame_equal(read_catalog(sample_root), slow_catalog(sample_root))


def test_a_cached_read_still_warns_of_malformed_lines(tmp_path, caplog):
    _odd_tree(tmp_path / "odd")
    read_catalog(tmp_path / "odd")
    caplog.clear()
    with caplog.at_level("WARNING", logger="embedder.catalog"):
        again = read_catalog(tmp_path / "odd")
    assert any("malformed" in r.getMessage() for r in caplog.records)
    pd.testing.assert_frame_equal(again, slow_catalog(tmp_path / "odd"))
