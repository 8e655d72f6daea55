import hashlib

from PIL import Image

from embedder.catalog import read_catalog, read_items
from ingest.sample import write_sample


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_sample_is_deterministic_per_seed(tmp_path):
    a = write_sample(tmp_path / "a", items=6, seed=1)
    b = write_sample(tmp_path / "b", items=6, seed=1)
    c = write_sample(tmp_path / "c", items=6, seed=2)
    d = write_sample(tmp_path / "d", items=6, seed=1, processes=2)
    assert _digest(a) == _digest(b) == _digest(d) != _digest(c)


def test_sample_layout_and_list_files(sample_root):
    lines = (sample_root / "Eval" / "list_eval_partition.txt").read_text().splitlines()
    assert int(lines[0]) == len(lines) - 2
    assert lines[1] == "image_pair_name_1 image_pair_name_2 item_id evaluation_status"
    consumer, shop, item, split = lines[2].split()
    assert "/comsumer_" in consumer and "/shop_" in shop and f"/{item}/" in consumer
    assert split in {"train", "val", "test"}
    boxes = (sample_root / "Anno" / "list_bbox_consumer2shop.txt").read_text().splitlines()
    assert boxes[1] == "image_name clothes_type source_type x_1 y_1 x_2 y_2"
    table = read_catalog(sample_root)
    whole = past = 0
    for row in table.itertuples():  # 1-based boxes, as the real file's; x2 may be width + 1
        with Image.open(sample_root / row.path) as img:
            assert 1 <= row.x1 < row.x2 <= img.width + 1 and 1 <= row.y1 < row.y2 <= img.height + 1
            whole += (row.x1, row.y1) == (1, 1) and row.x2 >= img.width and row.y2 >= img.height
            past += row.x2 == img.width + 1
    assert whole and past  # some boxes cover the whole photo, some end one pixel past it
    per_item = table.groupby("item_id")["source"].agg(set)
    assert all(set(kinds) == {"consumer", "shop"} for kinds in per_item)  # both kinds
    assert set(table.split) == {"train", "val", "test"}


def test_the_item_list_has_one_header_line_and_gaps(sample_root):
    lines = (sample_root / "Anno" / "list_item_consumer2shop.txt").read_text().splitlines()
    assert int(lines[0]) == len(lines) - 1  # the count, then one id a line: no header line
    numbers = [int(line.removeprefix("id_")) for line in lines[1:]]
    assert numbers == sorted(numbers) and numbers[-1] > len(numbers)  # numbering with gaps
    assert read_items(sample_root) == lines[1:]
    assert set(read_catalog(sample_root)["item_id"]) == set(lines[1:])


def test_some_garments_sit_in_two_subcategory_folders(sample_root, split_garment):
    item, consumer_folder, shop_folder = split_garment
    assert consumer_folder.parent != shop_folder.parent  # two subcategories of one category
    assert consumer_folder.parent.parent == shop_folder.parent.parent
    assert {p.name[:4] for p in consumer_folder.glob("*.jpg")} == {"coms"}
    assert {p.name[:4] for p in shop_folder.glob("*.jpg")} == {"shop"}
    pairs = (sample_root / "Eval" / "list_eval_partition.txt").read_text().splitlines()[2:]
    mine = [line.split() for line in pairs if line.split()[2] == item]
    assert mine and all(c.split("/")[2] != s.split("/")[2] for c, s, _, _ in mine)


def test_street_photos_show_the_garment_small_and_outfits_two_test_items(tmp_path):
    root = write_sample(tmp_path / "street", items=30, seed=2, style="street")
    table = read_catalog(root)
    consumers = table[table.source == "consumer"]
    shares = []
    for row in consumers.itertuples():
        with Image.open(root / row.path) as img:
            shares.append((row.y2 - row.y1 + 1) / img.height)
    assert 0.25 <= min(shares) and max(shares) <= 0.6  # the garment 30-55% of the frame's height
    types = table.groupby("category")["clothes_type"].agg(set).to_dict()
    assert types == {"TOPS": {1}, "TROUSERS": {2}, "DRESSES": {3}}  # as DeepFashion writes them
    lines = (root / "outfits" / "list_outfits.txt").read_text().splitlines()
    assert int(lines[0]) == len(lines) - 2 and lines[1].split()[:3] == [
        "image_name", "item_id", "clothes_type",
    ]  # fmt: skip
    rows = [line.split() for line in lines[2:]]
    by_photo = {}
    for name, item, kind, *box in rows:
        by_photo.setdefault(name, []).append((item, int(kind), [int(v) for v in box]))
    assert len(by_photo) >= 2 and all(len(v) == 2 for v in by_photo.values())
    split = table.drop_duplicates("item_id").set_index("item_id")
    for name, garments in by_photo.items():
        (top, one, upper), (bottom, two, lower) = garments
        assert (one, two) == (1, 2) and upper[1] < lower[1]  # the top above the trousers
        assert split.loc[top, "category"] == "TOPS" and split.loc[bottom, "category"] == "TROUSERS"
        assert split.loc[top, "split"] == split.loc[bottom, "split"] == "test"
        with Image.open(root / "outfits" / name) as img:
            assert all(1 <= b[0] < b[2] <= img.width and b[3] <= img.height for b in (upper, lower))
    assert not any(p.startswith("outfits/") for p in table.path)  # not part of the catalog
    phone = write_sample(tmp_path / "phone", items=3, seed=2)
    assert not (phone / "outfits").exists()
