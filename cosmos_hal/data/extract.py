"""Turn a video dataset into an image dataset (for Text2Image post-training).

Every ``stride``-th frame of videos/<stem>.mp4 becomes images/<stem>_<k:08d>.jpg, with the
clip's caption and T5 embedding copied alongside (upstream copies only the embedding;
our image dataset also wants the caption).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from cosmos_hal.data.errors import DatasetError
from cosmos_hal.data.video_io import read_video, video_info, write_image

log = logging.getLogger("cosmos_hal.data")


def extract_images(input_dir, output_dir, *, stride: int = 5, chunk: int = 16, progress: bool = True) -> dict[str, int]:
    """Returns {"videos", "images", "missing_embeddings", "missing_captions"}."""
    from tqdm import tqdm

    if stride < 1:
        raise ValueError(f"--stride {stride}: must be at least 1")
    src, dst = Path(input_dir), Path(output_dir)
    videos_dir = src / "videos"
    if not videos_dir.is_dir():
        raise DatasetError(f"{videos_dir}: folder missing; --input_dataset_dir must hold videos/*.mp4")
    videos = sorted(videos_dir.glob("*.mp4"))
    if not videos:
        raise DatasetError(f"{videos_dir}: no *.mp4 files to extract frames from")
    counts = {"videos": len(videos), "images": 0, "missing_embeddings": 0, "missing_captions": 0}
    for video in tqdm(videos, desc="extracting frames", unit="video", disable=not progress):
        stem = video.stem
        n = video_info(video)[0]
        wanted = list(range(0, n, stride))
        sidecars = [(src / "t5_xxl" / f"{stem}.pickle", "t5_xxl", ".pickle", "missing_embeddings"),
                    (src / "metas" / f"{stem}.txt", "metas", ".txt", "missing_captions")]
        for side, _, _, key in sidecars:
            if not side.is_file():
                counts[key] += 1
                log.warning("%s: missing; the extracted images of %s get none", side, video.name)
        for c in range(0, len(wanted), chunk):  # bounded memory on long 720p clips
            frames = read_video(video, wanted[c : c + chunk])
            for k, frame in enumerate(frames, start=c):
                name = f"{stem}_{k:08d}"
                write_image(dst / "images" / f"{name}.jpg", frame)
                for side, folder, suffix, _ in sidecars:
                    if side.is_file():
                        (dst / folder).mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(side, dst / folder / f"{name}{suffix}")
                counts["images"] += 1
    return counts
