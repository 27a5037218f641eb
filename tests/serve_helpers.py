"""A small store for the `clefctl serve` tests (API and browser): real face photos from scikit-image
(LFW faces, the astronaut photo cut to its face box), synthetic AU faces with ground-truth AU labels,
and one file that is a symbolic link pointing out of the data folder; embedded by a clef-tiny
"fine-tuned" checkpoint (random weights with a name-embedding head), so hits carry head probabilities."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

N_LFW = 24
N_SYNTH = 24
ASTRONAUT_BOX = (165, 30, 120, 150)    # the astronaut's face in skimage.data.astronaut()


def build_serve_store(root: Path, outside_link: bool = True) -> dict:
    """Write the images, the checkpoint and the store under ``root``; returns their paths and ids.
    ``outside_link``: add the row whose file is a symbolic link out of the data folder (last row)."""
    import torch
    from skimage import data as skdata

    from clefctl.data import synthetic
    from clefctl.data.records import Sample
    from clefctl.model import create, save_checkpoint
    from clefctl.prompts import load_prompts
    from clefctl.embed import embed_into_store

    root = Path(root)
    images, outside = root / "faces", root / "outside"
    images.mkdir(parents=True)
    outside.mkdir()
    prompts = load_prompts("synthetic-au")
    classes = prompts.class_ids
    samples = []
    for i, face in enumerate(skdata.lfw_subset()[:N_LFW]):
        p = images / f"lfw_{i:02d}.png"
        Image.fromarray((face * 255).astype(np.uint8)).resize((96, 96), Image.BICUBIC).convert("RGB").save(p)
        samples.append(Sample(id=f"lfw/{i:02d}", subject=f"lfw{i % 6}", path=str(p),
                              aus=np.zeros(len(classes), np.float32), au_mask=np.zeros(len(classes), np.float32)))
    astro = images / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(astro)
    samples.append(Sample(id="astronaut", subject="eileen", path=str(astro), box=ASTRONAUT_BOX,
                          aus=np.zeros(len(classes), np.float32), au_mask=np.zeros(len(classes), np.float32)))
    rng = np.random.default_rng(0)
    for i in range(N_SYNTH):
        ident = synthetic.make_identity(("F" if i % 2 else "M") + f"{i // 2:03d}", rng)
        on = {c: float(rng.random() < 0.35) for c in classes}
        if i % 3 == 0:
            on.update(AU6=1.0, AU12=1.0)                   # Duchenne smiles for the class filter
        img, _ = synthetic.render_face(ident, {c: 0.9 * v for c, v in on.items()}, size=96, seed=i)
        p = images / f"synth_{i:02d}.png"
        img.save(p)
        samples.append(Sample(id=f"synth/{i:02d}", subject=f"S{i // 2}", path=str(p),
                              aus=np.array([on[c] for c in classes], np.float32),
                              au_mask=np.ones(len(classes), np.float32)))
    if outside_link:
        secret = outside / "secret.png"
        Image.new("RGB", (32, 32), (200, 0, 0)).save(secret)
        link = images / "linked.png"
        os.symlink(secret, link)
        samples.append(Sample(id="linked", subject="x", path=str(link),
                              aus=np.zeros(len(classes), np.float32), au_mask=np.zeros(len(classes), np.float32)))

    base = create("clef-tiny", seed=0)
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, base, {"stage": "finetune", "task": "au", "dataset": "synthetic-au", "classes": classes},
                    extras={"name_embeddings": base.encode_texts(prompts.name_texts())})
    model = create("clef-tiny", str(ckpt))
    store = root / "store.h5"
    torch.manual_seed(0)
    embed_into_store(model, samples, store, batch_size=32, chunk_size=32, progress=False, image_set="serve-test",
                     task="au", classes=classes, num_workers=0)
    return {"store": store, "weights": ckpt, "model": model, "images": images, "outside": outside,
            "ids": [s.id for s in samples], "link_row": len(samples) - 1 if outside_link else None, "astronaut_row": N_LFW,
            "classes": classes}
