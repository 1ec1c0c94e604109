"""Image folders as they are found on shared storage: symbolic-link loops, FIFOs, sockets and devices named like
images, file names that are not UTF-8, folders that are mostly broken images; and a DataLoader worker killed
mid-run. Nothing hangs, one bad file never rejects the data set, and too many bad files stop the run with a
message."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from clikit import assert_one_message, invoke
from PIL import Image

from jepaflow.config import Component, load_recipe
from jepaflow.datasets.image_folder import ImageFolderDataset
from jepaflow.datasets.synthetic import SyntheticShapesDataset
from jepaflow.engine.trainer import train
from jepaflow.errors import DataError


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write_images(folder: Path, n: int, seed: int = 0, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def dataset(root: Path, **fields) -> ImageFolderDataset:
    return ImageFolderDataset(ImageFolderDataset.Config(root=str(root), image_size=16, **fields), split="train")


def test_special_files_named_like_images_are_skipped(tmp_path):
    cls = tmp_path / "train" / "a"
    write_images(cls, 4)
    os.mkfifo(cls / "x.png")  # open() would block until a writer comes
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(cls / "sock.jpg"))
    os.symlink("/dev/zero", cls / "zero.png")  # a device: reads forever
    os.symlink(cls / "nowhere.png", cls / "broken.png")
    with deadline(30):
        ds = dataset(tmp_path)
        assert len(ds) == 4
        for i in range(len(ds)):
            ds[i]
    assert ds.skipped == 0
    server.close()


def test_a_fifo_swapped_in_after_the_scan_is_skipped_not_waited_on(tmp_path):
    cls = tmp_path / "train" / "a"
    images = write_images(cls, 3)
    ds = dataset(tmp_path, max_unreadable_fraction=1.0)
    images[1].unlink()
    os.mkfifo(images[1])
    with deadline(30), pytest.warns(RuntimeWarning, match="not a regular file"):
        ds[1]
    assert ds.skipped == 1


def test_symlink_loops_do_not_hang_or_crash(tmp_path):
    cls = tmp_path / "train" / "a"
    write_images(cls, 3)
    os.symlink("..", cls / "up")  # a loop back to train/
    os.symlink(".", cls / "here")  # a loop onto itself
    os.symlink("self", cls / "self")  # a link to itself: ELOOP on stat
    (cls / "sub").mkdir()
    write_images(cls / "sub", 2, seed=1)
    os.symlink(cls, cls / "sub" / "back")
    with deadline(30):
        ds = dataset(tmp_path)
    assert len(ds) == 5  # each real image once
    assert ds.classes == ["a"]


def test_a_non_utf8_file_name_is_read_not_fatal(tmp_path):
    cls = tmp_path / "train" / "a"
    write_images(cls, 2)
    name = os.fsencode(cls) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(os.fsdecode(name), format="PNG")
    (cls / "b\udcff.png").write_bytes(b"not an image")  # undecodable name and content
    ds = dataset(tmp_path, max_unreadable_fraction=0.5)
    assert len(ds) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = [ds[i][0] for i in range(len(ds))]
    assert ds.skipped == 1 and all(img.shape == (3, 16, 16) for img in images)
    assert any(os.fsencode(ds.path(i)) == name for i in range(len(ds)))


def test_a_mostly_unreadable_folder_stops_with_a_message(tmp_path):
    cls = tmp_path / "train" / "a"
    write_images(cls, 2)
    for i in range(18):
        (cls / f"bad{i:02d}.png").write_bytes(os.urandom(100))  # 90% unreadable
    ds = dataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="could not be read") as info:
            for i in range(len(ds)):
                ds[i]
    assert "max_unreadable_fraction" in info.value.problem and "0.05" in info.value.problem
    assert "max_unreadable_fraction" in info.value.fix
    # allowed explicitly, it trains on what it can read (skipping and counting the rest)
    ok = dataset(tmp_path, max_unreadable_fraction=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(ok)):
            ok[i]
    assert ok.skipped == 18


@pytest.mark.parametrize("workers", [0, 1])
def test_a_mostly_unreadable_folder_through_the_cli(tmp_path, tiny_recipe, workers):
    cls = tmp_path / "data" / "train" / "a"
    write_images(cls, 4)
    for i in range(36):
        (cls / f"bad{i:02d}.png").write_bytes(os.urandom(100))
    raw = tiny_recipe({"train": {"num_workers": workers, "batch_size": 8}})
    raw["data"] = {"name": "image_folder", "root": str(tmp_path / "data"), "image_size": 32}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    err = assert_one_message(invoke("run", path), "could not be read", "max_unreadable_fraction")
    assert "DataLoader worker" not in err  # a worker's exception arrives as the message, not a traceback text


class KilledWorkerDataset(SyntheticShapesDataset):
    """Synthetic shapes whose DataLoader worker is killed (SIGKILL, as the out-of-memory killer does) at the
    first item it loads: the loop is then surely still waiting for it (a kill at a later item could come after
    the last step on a loaded machine, and the run would end without meeting it)."""

    def __getitem__(self, index):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)


def test_a_killed_dataloader_worker_is_a_clear_error(tiny_recipe):
    recipe = load_recipe(tiny_recipe({"train": {"num_workers": 1}}))
    comp = recipe.components["data"]
    recipe.components["data"] = Component(comp.kind, comp.name, KilledWorkerDataset, comp.config)
    with deadline(120), pytest.raises(DataError) as info:
        train(recipe)
    assert "data-loading worker process died" in info.value.problem
    assert "num_workers" in info.value.fix


def test_an_unreadable_sub_folder_is_skipped(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    cls = tmp_path / "train" / "a"
    write_images(cls, 2)
    (cls / "private").mkdir()
    write_images(cls / "private", 2)
    (cls / "private").chmod(0)
    try:
        with pytest.warns(RuntimeWarning, match="skipping the folder"):
            assert len(dataset(tmp_path)) == 2
    finally:
        (cls / "private").chmod(0o755)
