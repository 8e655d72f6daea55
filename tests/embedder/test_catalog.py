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
