"""The Python package against the shipped bundle: the same images and the same errors as
`ldm generate`, progress and cancellation, the GIL released, numpy and PIL in and out."""

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ldm

ROOT = Path(__file__).resolve().parents[3]
BUNDLE = ROOT / "export" / "emoji-text"
PROMPT = "red apple, twemoji style"


def ldm_binary() -> Path:
    """The `ldm` binary the test command built (`LDM_BIN`), else the workspace's."""
    given = os.environ.get("LDM_BIN")
    path = Path(given) if given else ROOT / "target" / "debug" / "ldm"
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build` (or set LDM_BIN)")
    return path


@pytest.fixture(scope="module")
def pipeline():
    return ldm.Pipeline.load(BUNDLE, threads=1)


def test_the_bundle_manifest_is_a_dict():
    bundle = ldm.Bundle.load(BUNDLE)
    assert bundle.name == "emoji-text"
    assert bundle.manifest["resolution"] == 64
    assert bundle.manifest["conditioning"]["kind"] == "text"


def test_an_image_equals_ldm_generate_pixel_for_pixel(pipeline, tmp_path):
    out = tmp_path / "cli.png"
    subprocess.run(
        [ldm_binary(), "generate", PROMPT, "--bundle", BUNDLE, "--seed", "3", "--out", out],
        check=True,
        capture_output=True,
    )
    ours = pipeline.generate(PROMPT, seed=3)[0]
    assert ours.size == (64, 64) and ours.mode == "RGB"
    assert np.array_equal(np.asarray(ours), np.asarray(Image.open(out).convert("RGB")))


def test_errors_carry_the_cli_message(pipeline, tmp_path):
    cli = subprocess.run(
        [ldm_binary(), "generate", PROMPT, "--bundle", BUNDLE, "--steps", "0",
         "--out", tmp_path / "x.png"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode != 0
    with pytest.raises(ldm.LdmError) as raised:
        pipeline.generate(PROMPT, steps=0)
    assert f"error: {raised.value}" in cli.stderr
    with pytest.raises(ldm.LdmError, match="unknown sampler 'heun'"):
        pipeline.generate(PROMPT, sampler="heun")
    with pytest.raises(ldm.LdmError, match="at most 65535"):
        pipeline.generate(PROMPT, n=1 << 40)
    with pytest.raises(ldm.LdmError, match="not a multiple of 16"):
        pipeline.generate(PROMPT, width=70, height=64)
    with pytest.raises(ldm.LdmError, match="cannot read the bundle manifest"):
        ldm.Pipeline.load(tmp_path / "no-bundle")
    with pytest.raises(ldm.LdmError, match="unknown backend 'gpu'"):
        ldm.Pipeline.load(BUNDLE, backend="gpu")


def test_progress_is_reported_and_a_false_answer_cancels(pipeline):
    seen = []
    pipeline.generate(PROMPT, steps=4, callback=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(ldm.Cancelled):
        pipeline.generate(PROMPT, steps=10, callback=lambda step, total: step < 2)


def test_an_exception_in_the_callback_stops_and_is_raised(pipeline):
    def broken(step, total):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        pipeline.generate(PROMPT, steps=5, callback=broken)
    assert pipeline.generate(PROMPT, steps=2)[0].size == (64, 64)


def test_the_gil_is_released_while_generating(pipeline):
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.005)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        started = time.perf_counter()
        pipeline.generate(PROMPT, steps=10)
        elapsed = time.perf_counter() - started
    finally:
        done.set()
        counter.join()
    during = [t for t in ticks if started <= t <= started + elapsed]
    # A thread that held the GIL for the whole generation would leave no tick inside it.
    assert len(during) >= max(3, elapsed / 0.005 / 4), (len(during), elapsed)


def test_numpy_out(pipeline):
    arrays = pipeline.generate(PROMPT, n=2, seed=5, steps=5, as_numpy=True)
    assert [a.shape for a in arrays] == [(64, 64, 3), (64, 64, 3)]
    assert arrays[0].dtype == np.uint8 and not np.array_equal(arrays[0], arrays[1])
    with pytest.raises(ldm.LdmError, match="HxWx3 uint8"):
        pipeline.generate(PROMPT, init_image=np.zeros((64, 64), dtype=np.float32))


def test_image_to_image_and_inpainting_equal_the_cli(pipeline, tmp_path):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = np.zeros((64, 64, 3), dtype=np.uint8)
    mask[:, 32:] = 255
    init.save(tmp_path / "init.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for extra, ours in [
        (["--strength", "0.5"], lambda: pipeline.generate(
            PROMPT, init_image=init, strength=0.5, steps=10, as_numpy=True)),
        (["--mask", tmp_path / "mask.png"], lambda: pipeline.generate(
            PROMPT, init_image=np.asarray(init), mask=mask, steps=10, as_numpy=True)),
    ]:
        out = tmp_path / "cli.png"
        subprocess.run(
            [ldm_binary(), "generate", PROMPT, "--bundle", BUNDLE, "--steps", "10",
             "--init-image", tmp_path / "init.png", *extra, "--out", out],
            check=True, capture_output=True,
        )
        assert np.array_equal(ours()[0], np.asarray(Image.open(out).convert("RGB"))), extra
    with pytest.raises(ldm.LdmError, match="grey values"):
        grey = np.full((64, 64, 3), 128, dtype=np.uint8)
        pipeline.generate(PROMPT, init_image=init, mask=grey)


def test_a_semantic_map_draws_as_the_cli_draws_it(tmp_path):
    semantic = ldm.Pipeline.load(ROOT / "export" / "scenes-semantic", threads=1)
    ids = np.zeros((64, 128), dtype=np.uint8)
    ids[16:48, 16:48] = 2  # a square on the left of a wide map
    Image.fromarray(ids, mode="L").save(tmp_path / "map.png")
    out = tmp_path / "cli.png"
    subprocess.run(
        [ldm_binary(), "generate", "--bundle", ROOT / "export" / "scenes-semantic",
         "--semantic-map", tmp_path / "map.png", "--steps", "4", "--out", out],
        check=True, capture_output=True,
    )
    for given in (ids, Image.fromarray(ids, mode="L")):
        ours = semantic.generate("", semantic_map=given, steps=4, as_numpy=True)[0]
        assert ours.shape == (64, 128, 3)
        assert np.array_equal(ours, np.asarray(Image.open(out).convert("RGB")))
    with pytest.raises(ldm.LdmError, match="class id 9"):
        semantic.generate("", semantic_map=np.full((64, 64), 9, dtype=np.uint8), steps=2)
    with pytest.raises(ldm.LdmError, match="mode L"):
        semantic.generate("", semantic_map=Image.new("RGB", (64, 64)), steps=2)


@pytest.mark.skipif("ort-cpu" not in ldm.backends(), reason="built without ONNX Runtime")
def test_onnx_runtime_draws_the_same_image_within_a_few_levels(pipeline):
    if not os.environ.get("ORT_DYLIB_PATH"):
        pytest.skip("ORT_DYLIB_PATH is not set (scripts/test.sh sets it)")
    on_ort = ldm.Pipeline.load(BUNDLE, backend="ort-cpu", threads=1)
    a = np.asarray(on_ort.generate(PROMPT, seed=1, steps=10)[0]).astype(int)
    b = np.asarray(pipeline.generate(PROMPT, seed=1, steps=10)[0]).astype(int)
    assert np.abs(a - b).mean() < 2.0
