"""The plan at file-system speed: vectorised point ids, shares and change detection agree with
the obvious per-file loops they replaced."""

import shutil
import uuid

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ingest.plan import make_plan, read_work, shard_mask
from ingest.runner import ensure_collection
from search.store import POINT_NAMESPACE, open_store, point_id, point_ids

ODD_PATHS = ["img/a b/ç été/id_1/shop_01.jpg", "x\ny.JPG", "", "img/" + "z" * 300, "日本/写真.png"]


def test_point_ids_are_uuid5_of_the_path():
    paths = [*ODD_PATHS, *(f"img/TOPS/Tees/id_{n:08d}/shop_01.jpg" for n in range(500))]
    expected = [str(uuid.uuid5(POINT_NAMESPACE, p)) for p in paths]
    assert point_ids(paths).tolist() == expected == [point_id(p) for p in paths]
    assert point_ids([]).tolist() == []


@pytest.mark.parametrize("n", [1, 3, 7])
def test_the_share_mask_is_the_slow_rule(n):
    ids = pd.Series(point_ids([f"p{i}" for i in range(400)]))
    shares = [shard_mask(ids, (k, n)) for k in range(1, n + 1)]
    for k, mask in enumerate(shares, 1):
        slow = [int(pid.replace("-", ""), 16) % n == k - 1 for pid in ids]
        assert mask.tolist() == slow
    assert (np.sum(shares, axis=0) == 1).all()  # disjoint and complete


def slow_plan(work, store):
    """The per-point comparison the vectorised join replaced: (present, changed, todo paths,
    gone ids)."""
    stored = store.retrieve(work.catalog["id"].tolist(), ["size", "mtime"])
    unchanged = [
        (p := stored.get(row.id)) is not None
        and p.get("size") == row.size
        and p.get("mtime") == row.mtime
        for row in work.catalog.itertuples()
    ]
    keep = set(work.catalog["id"])
    gone = sorted(
        pid for pts in store.scroll(64, vectors=False) for pid in pts.ids if pid not in keep
    )
    todo = sorted(work.catalog.loc[[not u for u in unchanged], "path"])
    return sum(unchanged), len(stored) - sum(unchanged), todo, gone


def test_the_vectorised_diff_agrees_with_the_slow_one(dataset, encoder, tmp_path, ingest_into):
    with open_store(store_dir=str(tmp_path / "db"), collection="c") as store:
        ensure_collection(store, encoder.spec)
        ingest_into(store, encoder, dataset, workers=0)
        table = read_work(dataset).catalog
        changed, gone = table.path[0], table.path[1]
        with Image.open(dataset / changed) as img:
            img.rotate(90).save(dataset / changed)  # changed: another size (and mtime)
        (dataset / gone).unlink()  # removed
        added = dataset / "img" / "TOPS" / "Tees" / "id_77777777" / "shop_01.jpg"
        added.parent.mkdir(parents=True)
        shutil.copy(dataset / table.path[5], added)  # added
        work = read_work(dataset)
        plan = make_plan(work, store)
        present, changed_count, todo, stale = slow_plan(work, store)
        assert (plan.present, plan.changed) == (present, changed_count) == (len(table) - 2, 1)
        assert sorted(plan.todo["path"]) == todo
        assert todo == sorted([changed, added.relative_to(dataset).as_posix()])
        assert sorted(plan.gone) == stale == [point_id(gone)]
        share = make_plan(read_work(dataset, shard=(1, 2)), store)
        mask = shard_mask(pd.Series([point_id(gone)]), (1, 2))[0]
        assert share.gone == ([point_id(gone)] if mask else [])


def test_the_state_kept_beside_the_store_is_used_only_while_it_holds(
    dataset, encoder, tmp_path, ingest_into
):
    from ingest.plan import STATE, stored_state

    with open_store(store_dir=str(tmp_path / "db"), collection="c") as store:
        ensure_collection(store, encoder.spec)
        ingest_into(store, encoder, dataset, workers=0)
        kept = store.sidecar(STATE)
        assert kept.is_file()
        from_file = stored_state(store, ["size", "mtime"])
        scrolled = stored_state(store, ["size", "mtime", "image_url"])[["size", "mtime"]]
        pd.testing.assert_frame_equal(from_file.sort_index(), scrolled.sort_index())
        pid = from_file.index[0]
        store.set_payloads({pid: {"size": 1}})  # any write makes the kept state stale
        assert not kept.exists()
        assert stored_state(store, ["size", "mtime"]).loc[pid, "size"] == 1
        rerun = ingest_into(store, encoder, dataset, workers=0)
        assert (rerun.embedded, rerun.changed) == (1, 1) and kept.is_file()
        kept.write_bytes(b"not an npz")  # damaged: read from the store instead
        plan = make_plan(read_work(dataset), store)
        assert (len(plan.todo), plan.present) == (0, len(from_file))
        np.savez(kept.with_name("x.npz"), ids=np.array([b"x"]), size=[1], mtime=[1])
        kept.with_name("x.npz").replace(kept)  # another count than the store's: ignored
        assert len(stored_state(store, ["size", "mtime"])) == len(from_file)


def test_the_kept_state_follows_the_catalog_after_new_photos(
    dataset, encoder, tmp_path, ingest_into
):
    """Kept in the catalog's order, the state lets the next rerun compare column to column
    (no join): also after photos that sort between the stored ones."""
    from ingest.plan import STATE

    with open_store(store_dir=str(tmp_path / "db"), collection="c") as store:
        ensure_collection(store, encoder.spec)
        ingest_into(store, encoder, dataset, workers=0)
        first = read_work(dataset).catalog
        added = dataset / "img" / "DRESSES" / "Aaa" / "id_00000000" / "shop_01.jpg"
        added.parent.mkdir(parents=True)
        shutil.copy(dataset / first.path[3], added)  # sorts before every stored photo
        assert ingest_into(store, encoder, dataset, workers=0).embedded == 1
        catalog = read_work(dataset).catalog
        with np.load(store.sidecar(STATE)) as data:
            assert data["ids"].astype(str).tolist() == catalog["id"].tolist()
            assert data["mtime"].tolist() == catalog["mtime"].tolist()
        plan = make_plan(read_work(dataset), store)
        assert (len(plan.todo), plan.present, plan.changed, plan.gone) == (0, len(catalog), 0, [])
        with Image.open(added) as img:
            img.rotate(90).save(added)
        plan = make_plan(read_work(dataset), store)
        assert plan.todo["path"].tolist() == [added.relative_to(dataset).as_posix()]
        assert (plan.present, plan.changed) == (len(catalog) - 1, 1)  # present: unchanged


def test_a_truncated_state_beside_the_store_is_discarded_and_rebuilt(
    dataset, tmp_path, ingest_tiny
):
    """Truncated mid-write (a full disk, a kill), the kept state is a zip that cannot be read:
    the next runs plan from the store, then keep a good one again."""
    from ingest.plan import STATE

    db = tmp_path / "db"
    assert ingest_tiny(dataset, db).exit_code == 0
    kept = next(db.rglob(STATE))
    kept.write_bytes(kept.read_bytes()[: kept.stat().st_size // 2])
    for _ in range(2):
        again = ingest_tiny(dataset, db)
        assert again.exit_code == 0, again.output
        assert "embedded 0 (0 changed)" in again.output and "Traceback" not in again.output
    with np.load(kept) as data:  # whole again
        assert len(data["ids"]) == len(read_work(dataset).catalog)
