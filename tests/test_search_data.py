"""Streamed image data: nested folders, class subsets, held-out splits that stay held out, torch transforms,
augmentation that depends on (seed, epoch, image) only, and dnas train rebuilding the search's split."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from search.data.datasets import image_folder, load_data, load_recorded, set_epoch
from search.data.loader import train_loader
from search.data.transforms import IMAGENET_MEAN_STD, centre_crop_box, decode_eval, random_resized_crop_box


def make_folder(root, classes=("cat", "dog", "eel", "fox"), per_class=15, start=0, size=(64, 48)):
    rng = np.random.default_rng(start)
    for c in classes:
        for i in range(start, start + per_class):
            sub = root / c / ("nested" if i % 2 else "") / ""
            sub.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(sub / f"{c}_{i}.jpg", quality=85)
    return root


def _names(ds):
    return {p.decode() for p in ds.paths}


def test_splits_are_disjoint_nested_and_stable_when_images_are_added(tmp_path):
    root = make_folder(tmp_path / "imgs")
    splits = image_folder(root, resolution=32, seed=3)
    w, a, v = _names(splits.weights), _names(splits.arch), _names(splits.val)
    assert len(w | a | v) == 60 and not (w & a) and not (w & v) and not (a & v)
    assert any("nested" in n for n in v | w)
    assert splits.num_classes == 4 and splits.record["split_seed"] == 3 and splits.streamed
    make_folder(root, start=100)  # the folder grows
    grown = image_folder(root, resolution=32, seed=3)
    assert v <= _names(grown.val) and not (_names(grown.val) & (w | a))  # no search image moved into val
    assert image_folder(root, resolution=32, seed=4).record["val_sha256"] != grown.record["val_sha256"]


def test_class_subset_is_random_but_recorded(tmp_path):
    root = make_folder(tmp_path / "imgs")
    two = image_folder(root, resolution=32, seed=0, classes=2)
    assert two.num_classes == 2 and len(two.record["classes"]) == 2
    assert image_folder(root, resolution=32, seed=0, classes=2).record["classes"] == two.record["classes"]
    assert {int(y) for y in two.weights.labels} == {0, 1}
    assert {p.decode().split("/")[0] for p in two.weights.paths} == set(two.record["classes"])


def test_transforms_and_augmentation_depend_on_seed_epoch_and_image_only(tmp_path):
    root = make_folder(tmp_path / "imgs")
    splits = image_folder(root, resolution=24, seed=0)
    x, y = splits.weights[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(splits.weights[0][0], x)  # same epoch, same crop
    set_epoch(splits.weights, 1)
    assert not torch.equal(splits.weights[0][0], x)  # a new epoch, a new crop
    v1, v2 = splits.val[0][0], splits.val[0][0]
    assert torch.equal(v1, v2)  # evaluation is deterministic
    # Worker processes change nothing: the batches are the same with 0 and 2 workers.
    batches = {}
    for workers in (0, 2):
        loader, steps = train_loader(splits.weights, 8, seed=0, epoch=2, rank=0, world=1, start_step=0,
                                     max_steps=None, workers=workers, pin=False)  # fmt: skip
        batches[workers] = [xb for xb, _ in loader]
        assert len(batches[workers]) == steps
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2], strict=True))


def test_crop_boxes_follow_imagenet_practice():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(500, 375, g)
        assert 0 <= left <= 500 - w and 0 <= top <= 375 - h
        assert 0.08 * 500 * 375 * 0.9 <= w * h <= 500 * 375 and 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    assert centre_crop_box(256, 300) == (16, 38, 224, 224)
    # ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) per channel, written out here rather
    # than read from the constant under test: an image of the mean decodes to ~0, a white one to (1 - mean) / std.
    grey = decode_eval(Image.new("RGB", (300, 300), (124, 116, 104)), 32, *IMAGENET_MEAN_STD)
    assert grey.shape == (3, 32, 32) and grey.abs().max() < 0.02
    white = decode_eval(Image.new("RGB", (300, 300), (255, 255, 255)), 32, *IMAGENET_MEAN_STD)
    expected = torch.tensor([0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225]).view(3, 1, 1).expand(3, 32, 32)
    assert torch.allclose(white, expected, atol=1e-4)


def test_dnas_train_evaluates_on_the_split_the_search_held_out(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("a", "b"), per_class=20)
    searched = load_data(f"imagefolder:{root}", 32, seed=5)
    rebuilt = load_recorded(searched.record, 32)
    assert _names(rebuilt.val) == _names(searched.val)
    assert not (_names(rebuilt.weights) | _names(rebuilt.arch)) & _names(searched.val)
    from search.space.macro import SearchSpace, Stage

    space = SearchSpace(name="t", resolution=32, stem_c=8, stem_stride=2, stages=(Stage(8, 1, 2),), head_c=16,
                        num_classes=2, candidates=("ir_k3_e1", "skip"))  # fmt: skip
    doc = {"arch": ["skip"], "space": space.to_dict(), "data": searched.record}
    (tmp_path / "arch.json").write_text(json.dumps(doc))
    cmd = [sys.executable, "-m", "dnas", "train", "--arch", str(tmp_path / "arch.json"), "--epochs", "1",
           "--batch-size", "8", "--workers", "0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["data"]["split_seed"] == 5 and result["data"]["sizes"] == searched.record["sizes"]


@pytest.mark.parametrize("spec", ["digits"])
def test_in_memory_data_records_its_split(spec):
    splits = load_data(spec, 16, seed=2, classes=3)
    assert splits.num_classes == 3 and splits.record["spec"] == spec and splits.record["split_seed"] == 2
    assert not splits.streamed
