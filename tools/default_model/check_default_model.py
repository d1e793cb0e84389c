#!/usr/bin/python3
"""ctest `default_model_matches_tfjs`: the built default model.pt against TensorFlow.js.

Loads model.pt the way the C++ side does (TorchScript + the model.json extra
file), preprocesses the committed 224x224 input PNGs with model.json's own
mean/std, and checks the embeddings against the TensorFlow.js feature vectors
in tests/data/default_model (made by reference/regenerate.sh):
  * every image: cosine(ours, normalised tfjs) >= 0.999, raw pooled features
    within 1e-3 absolute;
  * different images are clearly apart, and the near-duplicate motorcycle
    stereo pair is each other's nearest neighbour;
  * feeding the wrong input range ([0,1] instead of model.json's mean/std)
    fails the cosine bound, so the bound is tight enough to catch a
    preprocessing mistake.

usage: check_default_model.py MODEL_PT DATA_DIR
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

kMinCosine = 0.999
kMaxRawAbsDiff = 1e-3
kMaxUnrelatedCosine = 0.8
kNearDuplicates = ("motorcycle_left.png", "motorcycle_right.png")

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_path, data_dir = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)

    extra = {"model.json": ""}
    model = torch.jit.load(model_path, map_location="cpu", _extra_files=extra)
    model.eval()
    meta = json.loads(extra["model.json"])
    check(meta.get("format") == 1 and meta.get("version") == "nsfwjs-4.4.0" and
          meta.get("embed_dim") == 1792 and meta.get("image_size") == 224 and
          meta.get("metric") == "cosine" and "text" in meta and meta["text"] is None,
          f"model.json identity fields: {meta}")
    check(meta.get("resize") in ("shortest_edge", "squash") and
          meta.get("crop") in ("center", "none") and
          not (meta.get("crop") == "none" and meta.get("resize") != "squash") and
          meta.get("interpolation") in ("bicubic", "bilinear", "nearest") and
          len(meta.get("mean", [])) == 3 and len(meta.get("std", [])) == 3,
          "model.json preprocessing fields are valid")

    with open(os.path.join(data_dir, "reference.json"), encoding="utf-8") as f:
        ref_meta = json.load(f)
    ref = torch.from_numpy(np.load(os.path.join(data_dir, ref_meta["features_file"])))
    names = [im["file"] for im in ref_meta["images"]]
    check(ref.shape == (len(names), 1792) and len(names) >= 6,
          f"reference holds {len(names)} images x {tuple(ref.shape)[1:]}")

    pixels = []
    for im in ref_meta["images"]:
        path = os.path.join(data_dir, "inputs", im["file"])
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        check(digest == im["sha256"], f"{im['file']} is the input the reference was made from")
        with Image.open(path) as img:
            pixels.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    unit = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255  # [N,3,H,W] in [0,1]
    mean = torch.tensor(meta["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32).view(1, 3, 1, 1)
    x = (unit - mean) / std

    with torch.no_grad():
        emb = model.encode_image(x)
        fwd = model.forward(x)
        single = model.encode_image(x[2:3])
        raw = model.features(x).mean(dim=(2, 3))
        wrong = model.encode_image(unit)  # [0,1] input: what a wrong mean/std would feed

    check(tuple(emb.shape) == (len(names), 1792) and emb.dtype == torch.float32,
          f"encode_image shape {tuple(emb.shape)}")
    check(torch.allclose(emb.norm(dim=1), torch.ones(len(names)), atol=1e-5),
          "embeddings are L2-normalised")
    check(torch.allclose(fwd, emb), "forward == encode_image")
    check(torch.allclose(single[0], emb[2], atol=1e-5), "batch of one == row of a batch")

    ref_unit = F.normalize(ref, dim=1)
    cos = (emb * ref_unit).sum(dim=1)
    raw_diff = (raw - ref).abs().max().item()
    emb_diff = (emb - ref_unit).abs().max().item()
    for n, c in zip(names, cos.tolist()):
        check(c >= kMinCosine, f"{n}: cosine with tfjs {c:.7f} >= {kMinCosine}")
    check(raw_diff <= kMaxRawAbsDiff,
          f"raw pooled features: max abs diff {raw_diff:.3g} <= {kMaxRawAbsDiff}")
    print(f"agreement: min cosine {cos.min().item():.9f}, max abs diff "
          f"{emb_diff:.3g} (normalised), {raw_diff:.3g} (raw SpatialSqueeze)")

    sim = emb @ ref_unit.T  # ours vs tfjs, all pairs
    near = {names.index(n) for n in kNearDuplicates}
    for i, n in enumerate(names):
        others = [j for j in range(len(names)) if j != i]
        best = max(others, key=lambda j: sim[i, j].item())
        check(sim[i, i] > sim[i, best] + 0.02,
              f"{n}: own reference is the clear best match ({sim[i, i]:.4f} vs {sim[i, best]:.4f})")
        unrelated = [j for j in others if not (i in near and j in near)]
        worst = max(sim[i, j].item() for j in unrelated)
        check(worst < kMaxUnrelatedCosine,
              f"{n}: unrelated images have cosine {worst:.4f} < {kMaxUnrelatedCosine}")
        if i in near:
            check(best in near, f"{n}: nearest other image is its stereo twin ({names[best]})")

    wrong_cos = (wrong * ref_unit).sum(dim=1).min().item()
    check(wrong_cos < kMinCosine,
          f"wrong input range is caught: min cosine {wrong_cos:.4f} < {kMinCosine}")

    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
