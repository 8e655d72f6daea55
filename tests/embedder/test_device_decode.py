"""The device-decode path, run here with torchvision's CPU decoder: same images, same vectors."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from embedder import Encoder, embed_batches, read_catalog
from embedder.catalog import bbox_of
from embedder.device_decode import orient


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pil_exif_transpose(tmp_path, orientation):
    rgb = Image.fromarray(np.random.default_rng(orientation).integers(0, 255, (6, 9, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb.save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as img:
        expected = np.asarray(ImageOps.exif_transpose(img))
    got = orient(torch.from_numpy(np.array(rgb)).permute(2, 0, 1), orientation)
    assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_device_decode_gives_the_cpu_paths_vectors_and_failures(sample_root, tiny_model, tmp_path):
    import shutil

    root = shutil.copytree(sample_root, tmp_path / "s")
    odd = root / "img" / "TOPS" / "Tees" / "id_77777777"
    odd.mkdir(parents=True)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 60, 3), np.uint8))
    rgb.save(odd / "shop_01.png")  # not a JPEG: decoded by the worker
    rgb.convert("CMYK").save(odd / "shop_02.jpg")  # CMYK JPEG: the CPU decides
    (odd / "shop_03.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)  # JPEG header, no image
    table = read_catalog(root)
    paths = [str(root / p) for p in table.path]
    boxes = [bbox_of(r) for r in table.itertuples(index=False)]
    encoder = Encoder(tiny_model, "cpu", "fp32")
    results = {}
    for decode in ("cpu", "device"):
        vectors, failed = {}, {}
        for part in embed_batches(encoder, paths, boxes, batch_size=8, workers=0, decode=decode):
            vectors.update(zip(part.index, part.vectors, strict=True))
            failed.update(part.failed)
        results[decode] = vectors, failed
    (cpu, cpu_failed), (dev, dev_failed) = results["cpu"], results["device"]
    assert cpu.keys() == dev.keys() and len(cpu) == len(paths) - 1
    assert cpu_failed.keys() == dev_failed.keys() == {paths.index(str(odd / "shop_03.jpg"))}
    cosine = [float(cpu[i] @ dev[i]) for i in cpu]
    assert min(cosine) > 0.98  # resampling differs slightly between PIL and torch
