"""Batch Video2World over a folder of paired ``NAME.png`` + ``NAME.txt`` files (the layout of
the GR1 test set): one ``NAME.mp4`` per pair in the output folder, with a progress bar.

Sample i (in sorted name order) draws its noise with ``Key(seed, "init_latents", 0, 0, i)``,
so a rerun of the same folder reproduces every video.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cosmos_hal.infer.conditioning import IMAGE_SUFFIXES
from cosmos_hal.infer.errors import InferenceInputError


def find_pairs(folder) -> list[tuple[str, Path, Path]]:
    """(name, image, prompt file) for every image that has a same-named .txt; unpaired files
    are an error that lists them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InferenceInputError(f"--batch_dir {folder}: not a folder")
    images = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    texts = {p.stem: p for p in sorted(folder.glob("*.txt"))}
    lonely = sorted([images[s].name for s in set(images) - set(texts)] + [texts[s].name for s in set(texts) - set(images)])
    if lonely:
        raise InferenceInputError(
            f"--batch_dir {folder}: {len(lonely)} file(s) without a partner (each NAME.png needs NAME.txt): "
            f"{', '.join(lonely[:10])}"
        )
    if not images:
        raise InferenceInputError(f"--batch_dir {folder}: no NAME.png + NAME.txt pairs found")
    return [(stem, images[stem], texts[stem]) for stem in sorted(images)]


def run_batch(pipe, folder, out_dir, base_request, *, skip_existing: bool = False, progress: bool = True) -> list[Path]:
    """Generate every pair; returns the written mp4 paths."""
    from tqdm.auto import tqdm

    from cosmos_hal.infer.checks import read_prompt
    from cosmos_hal.infer.conditioning import load_image
    from cosmos_hal.infer.generate import video2world, write_output

    pairs = find_pairs(folder)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    pipe.set_progress_bar_config(leave=False, disable=not progress)
    for index, (name, image, text) in enumerate(tqdm(pairs, desc="videos", unit="video", disable=not progress)):
        target = out_dir / f"{name}.mp4"
        if skip_existing and target.is_file():
            continue
        req = replace(
            base_request,
            prompt=read_prompt(None, text),
            conditioning={"image": load_image(image, flag="--batch_dir image")},
            index=index,
        )
        written.append(write_output(target, video2world(pipe, req), req.fps))
    return written
