import hashlib

from PIL import Image

from embedder.catalog import read_catalog
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
    for row in table.itertuples():
        with Image.open(sample_root / row.path) as img:
            assert 0 <= row.x1 < row.x2 <= img.width and 0 <= row.y1 < row.y2 <= img.height
    per_item = table.groupby("item_id")["source"].agg(set)
    assert (per_item == {"consumer", "shop"}).all()  # every item has both kinds of photo
    assert set(table.split) == {"train", "val", "test"}
