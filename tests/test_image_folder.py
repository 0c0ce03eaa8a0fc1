"""Image folders as SimpleTuner reads them (issue 17 point 5, seed 002): caption strategies, the
T5 cache beside the data, aspect-ratio buckets, and the errors a user sees (CPU, tiny)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_hal import dist
from cosmos_hal.data import image_folder as folder
from cosmos_hal.data.buckets import BucketSampler, bucket_for
from cosmos_hal.data.errors import BadSampleError, DatasetError
from cosmos_hal.data.text_cache import TextCache
from cosmos_hal.models.presets import get_preset
from cosmos_hal.train import experiments, image_data
from cosmos_hal.train.preflight import check_paths
from kernel_reference import rel_err
from test_infer_tiny import save_tiny_pipeline

SHAPES = [(32, 32), (32, 32), (24, 48), (24, 48), (48, 24), (40, 40), (20, 60)]  # (h, w)
SUFFIXES = [".png", ".jpg", ".webp"]


def write_folder(root: Path, shapes=SHAPES, captions=True) -> list[Path]:
    """Random images of mixed shapes and formats, with <name>.txt captions."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(shapes):
        path = root / f"photo_of_{i}{SUFFIXES[i % 3]}"
        Image.fromarray(gen.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        if captions:
            path.with_suffix(".txt").write_text("a red cube on the table\n" if i % 2 else "a green ball\n")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny Cosmos2 Text2Image pipeline folder: text_encoder/ and tokenizer/ are what the cache reads."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe", "text2image")


def image_exp(data, pipe, out, *overrides):
    return experiments.get("tiny_text2image_image_folder",
                           [f"dataset_path={data}", f"model_path={pipe}" if pipe else "model_path=",
                            f"output_dir={out}", *overrides])


def build(exp):
    return image_data.build(exp, get_preset(exp.preset), dist.world(), dp_rank=0, dp_size=1)


# -- caption strategies ---------------------------------------------------------------------------


def test_filename_strategy_turns_underscores_into_spaces_and_drops_the_extension():
    assert folder.captions_of(Path("/x/a_red_cube_on_a_table.webp"), "filename") == ("a red cube on a table",)


def test_textfile_strategy_reads_the_same_named_txt_one_caption_per_line(tmp_path):
    img = write_folder(tmp_path, [(16, 16)])[0]
    img.with_suffix(".txt").write_text("a green ball\n\n  the robot arm  \n")
    assert folder.captions_of(img, "textfile") == ("a green ball", "the robot arm")


def test_instanceprompt_strategy_gives_every_image_the_one_prompt(tmp_path, pipeline):
    write_folder(tmp_path / "d", captions=False)
    exp = image_exp(tmp_path / "d", pipeline, tmp_path / "o", "data.caption_strategy=instanceprompt",
                    "data.instance_prompt=a photo of sks robot")
    dataset, _ = build(exp)
    assert {dataset.caption(i) for i in range(len(dataset))} == {"a photo of sks robot"}


def test_an_instance_prompt_the_strategy_would_ignore_is_refused_with_the_override_to_type(tmp_path):
    with pytest.raises(experiments.ExperimentError, match="data.caption_strategy=instanceprompt") as err:
        image_exp(tmp_path / "d", None, tmp_path / "o", "data.instance_prompt=a photo of sks robot")
    assert "data.caption_strategy=textfile does not use it" in str(err.value)


def test_multiline_caption_is_chosen_per_epoch_from_the_seed(tmp_path, pipeline):
    paths = write_folder(tmp_path / "d")
    paths[0].with_suffix(".txt").write_text("a green ball\nthe robot arm\nred cube\n")
    dataset, _ = build(image_exp(tmp_path / "d", pipeline, tmp_path / "o"))
    picks = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        picks.append(dataset.caption(0))
    assert set(picks) == {"a green ball", "the robot arm", "red cube"}
    again, _ = build(image_exp(tmp_path / "d", pipeline, tmp_path / "o2"))
    again.set_epoch(5)
    dataset.set_epoch(5)
    assert again.caption(0) == dataset.caption(0)


# -- the T5 cache -----------------------------------------------------------------------------------


def test_cache_is_written_once_reused_and_an_edited_caption_is_reencoded(tmp_path, pipeline):
    paths = write_folder(tmp_path / "d")
    cache = TextCache(tmp_path / "d" / "t5_cache", pipeline)
    captions = [folder.captions_of(p, "textfile")[0] for p in paths]
    assert cache.fill(captions) == {"encoded": 2, "reused": 0}
    files = sorted(cache.folder.glob("*.pickle"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    # a second run (through the trainer's builder) finds every caption and writes only its validation prompts
    build(image_exp(tmp_path / "d", pipeline, tmp_path / "o", "validation_every=0"))
    assert cache.fill(captions) == {"encoded": 0, "reused": 2}
    assert {f: f.stat().st_mtime_ns for f in sorted(cache.folder.glob("*.pickle"))} == stamps
    assert not list(cache.folder.glob("*.tmp"))  # written to a temporary name, then renamed
    # an edited caption gets its own file; the others stay
    paths[0].with_suffix(".txt").write_text("the robot arm moves slowly\n")
    dataset, _ = build(image_exp(tmp_path / "d", pipeline, tmp_path / "o"))
    assert cache.path("the robot arm moves slowly").is_file()
    assert dataset.load(0)["caption"] == "the robot arm moves slowly"
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


def test_cached_embedding_equals_the_pipelines_t5_features(tmp_path, pipeline):
    from cosmos_hal.models.text import encode_prompts, load_text_encoder

    write_folder(tmp_path / "d")
    dataset, _ = build(image_exp(tmp_path / "d", pipeline, tmp_path / "o"))
    item = dataset.load(1)
    encoder, tokenizer = load_text_encoder(pipeline, dtype=torch.float64)
    ref = encode_prompts(encoder, tokenizer, [item["caption"]])[0]
    got = item["t5_text_embeddings"].double()
    assert got.shape == ref.shape == (512, 64)
    assert rel_err(got, ref) < 1e-3  # float16 on disk, as NVIDIA's t5_xxl files
    assert item["t5_text_mask"].sum() == (ref.abs().sum(-1) > 0).sum()


def test_another_encoder_gets_its_own_cache_folder(tmp_path, pipeline):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(pipeline, other)
    cfg = other / "text_encoder" / "config.json"
    cfg.write_text(cfg.read_text().replace('"dropout_rate": 0.1', '"dropout_rate": 0.2'))
    assert TextCache(tmp_path, pipeline).folder != TextCache(tmp_path, other).folder


# -- buckets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(1024, 1024), (768, 1360), (1360, 768), (500, 2000), (3000, 1000)])
def test_bucket_keeps_the_aspect_at_about_the_target_area_in_multiples_of_16(h, w):
    bh, bw = bucket_for(h, w, 1024 * 1024, 16)
    assert bh % 16 == 0 and bw % 16 == 0
    assert abs(bh * bw / (1024 * 1024) - 1) < 0.05
    assert abs((bw / bh) / (w / h) - 1) < 0.05


def test_bucket_sampler_gives_single_bucket_batches_uses_every_sample_and_shards_like_one_big_batch():
    buckets = [(16, 16)] * 7 + [(16, 32)] * 3 + [(32, 16)]
    one = BucketSampler(buckets, batch_size=4, seed=3)
    ranks = [BucketSampler(buckets, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        big = [one.indices(epoch)[k : k + 4] for k in range(0, len(one), 4)]
        assert {i for b in big for i in b} == set(range(len(buckets)))  # nobody dropped
        assert all(len({buckets[i] for i in b}) == 1 for b in big)  # one shape per batch
        per_rank = [r.indices(epoch) for r in ranks]
        for k, b in enumerate(big):  # rank r's i-th sample is place r + 2 i of the global batch
            assert [per_rank[0][2 * k], per_rank[1][2 * k], per_rank[0][2 * k + 1], per_rank[1][2 * k + 1]] == b
    assert one.indices(0) == BucketSampler(buckets, batch_size=4, seed=3).indices(0)
    assert one.indices(0) != one.indices(1) and one.indices(0) != BucketSampler(buckets, batch_size=4, seed=4).indices(0)
    fixed = BucketSampler(buckets, batch_size=4, seed=3, shuffle=False)  # parity mode: the same every epoch
    assert fixed.indices(0) == fixed.indices(1)


def test_mixed_shape_folder_trains_every_image_at_its_own_aspect(tmp_path, pipeline):
    paths = write_folder(tmp_path / "d")
    dataset, loader = build(image_exp(tmp_path / "d", pipeline, tmp_path / "o"))
    seen, shapes = set(), set()
    batches = iter(loader)
    for _ in range(loader.batches_per_epoch):
        batch = next(batches)
        h, w = batch["video"].shape[-2:]
        shapes.add((h, w))
        assert batch["video"].shape[0] == 2 and batch["t5_text_embeddings"].shape == (2, 512, 64)
        for p in batch["path"]:
            seen.add(p)
            oh, ow = next(s for q, s in zip(paths, SHAPES) if str(q) == p)
            assert (h * w) <= 1024 and h % 16 == 0 and w % 16 == 0
            assert abs(np.log((w / h) / (ow / oh))) < np.log(1.6)  # the aspect is kept, up to the 16-pixel grid
    assert seen == {str(p) for p in paths}
    assert len(shapes) >= 3  # wide, tall and square images are not squeezed into one size


# -- errors -----------------------------------------------------------------------------------------


def test_empty_folder_says_what_the_layout_wants(tmp_path, pipeline):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("no images here")
    exp = image_exp(tmp_path / "d", pipeline, tmp_path / "o")
    with pytest.raises(experiments.ExperimentError, match=r"no \*\.jpg/\*\.jpeg/\*\.png/\*\.webp files") as err:
        check_paths(exp)
    assert str(err.value).count(str(tmp_path / "d")) == 1, err.value  # named once, as dataset_path=...


def test_image_without_caption_under_textfile_names_the_file_and_the_alternatives(tmp_path, pipeline):
    paths = write_folder(tmp_path / "d")
    os.remove(paths[2].with_suffix(".txt"))
    exp = image_exp(tmp_path / "d", pipeline, tmp_path / "o", "data.skip_bad_samples=false")
    with pytest.raises(experiments.ExperimentError) as err:
        check_paths(exp)
    msg = str(err.value)
    assert f"{paths[2].with_suffix('.txt')}: caption file missing for {paths[2].name}" in msg
    assert "data.caption_strategy=filename" in msg and "data.skip_bad_samples=true" in msg
    # skipping (the default) trains on the rest and reports the file
    dataset, loader = build(image_exp(tmp_path / "d", pipeline, tmp_path / "o"))
    assert len(dataset) == len(paths) - 1 and "caption file missing" in loader.bad_sample_report()


def test_unreadable_image_names_the_file(tmp_path, pipeline):
    paths = write_folder(tmp_path / "d")
    paths[1].write_bytes(b"this is not a jpeg")
    exp = image_exp(tmp_path / "d", pipeline, tmp_path / "o", "data.skip_bad_samples=false")
    with pytest.raises(experiments.ExperimentError, match=f"{paths[1]}: cannot read image"):
        check_paths(exp)


def test_image_that_fails_to_decode_later_is_replaced_from_its_own_bucket(tmp_path, pipeline):
    write_folder(tmp_path / "d")
    dataset, _ = build(image_exp(tmp_path / "d", pipeline, tmp_path / "o"))
    i = dataset.buckets.index((32, 32))
    dataset.samples[i].media.write_bytes(b"broken after listing")
    item = dataset[i]
    assert item["path"] != str(dataset.samples[i].media) and tuple(item["video"].shape[-2:]) == (32, 32)
    assert str(dataset.samples[i].media) in dataset.bad
    dataset.skip_bad_samples = False  # data.skip_bad_samples=false: the error names the file
    with pytest.raises(BadSampleError, match=f"{dataset.samples[i].media}: cannot decode image"):
        dataset[i]


def test_no_text_encoder_stops_before_the_model_with_what_to_pass(tmp_path):
    write_folder(tmp_path / "d")
    exp = image_exp(tmp_path / "d", None, tmp_path / "o")
    with pytest.raises(experiments.ExperimentError, match="pass data.text_encoder_path=<folder>"):
        check_paths(exp)
    with pytest.raises(DatasetError, match="model_path= pipeline folder that has text_encoder/"):
        build(exp)


def test_auto_layout_recognises_a_flat_image_folder(tmp_path, pipeline):
    write_folder(tmp_path / "d")
    exp = image_exp(tmp_path / "d", pipeline, tmp_path / "o", "data.layout=auto")
    assert image_data.wanted(exp)
    check_paths(exp)


def test_validation_prompts_come_as_one_several_or_a_simpletuner_prompt_library(tmp_path):
    import json

    from cosmos_hal.train.validation import parse_prompts

    assert parse_prompts("A photo-realistic image of a cat") == [("00_A_photo_realistic_image_of_a_cat",
                                                                  "A photo-realistic image of a cat")]
    assert [p for _, p in parse_prompts(" a red cube | the robot arm ")] == ["a red cube", "the robot arm"]
    library = tmp_path / "user_prompt_library.json"
    library.write_text(json.dumps({"anime_sks": "an anime portrait of sks", "man": "a portrait of a man"}))
    assert parse_prompts(str(library)) == [("00_anime_sks", "an anime portrait of sks"),
                                           ("01_man", "a portrait of a man")]
    with pytest.raises(experiments.ExperimentError, match="no such prompt library"):
        experiments.get("tiny_text2image_image_folder", [f"validation_prompts={tmp_path / 'missing.json'}"])
    with pytest.raises(experiments.ExperimentError, match="validation renders Text2Image only"):
        experiments.get("tiny_video2world_synthetic", ["validation_every=5", "validation_prompts=a cat"])


def test_validation_without_a_text_encoder_stops_at_check_with_what_to_pass(tmp_path):
    from cosmos_hal.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", layout="image", num_videos=1, height=32, width=32,
                                  text_embed_dim=64)
    exp = experiments.get("tiny_text2image_synthetic", [f"dataset_path={data}", "validation_every=5",
                                                        "validation_prompts=a red square"])
    with pytest.raises(experiments.ExperimentError, match="validation_every=5 .* pass data.text_encoder_path="):
        check_paths(exp)
