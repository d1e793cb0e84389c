#!/usr/bin/env python3
"""Checks the exporter's Hugging Face path against transformers itself.

Builds small random transformers.CLIPModel instances (every weight random, biases and
LayerNorms included), saves them with save_pretrained (+ a CLIPImageProcessor), exports them
with export_clip.py, and compares the archive's encode_image / encode_text with transformers'
get_image_features / get_text_features (L2-normalised), on CPU and, when present, on CUDA.
Passes when every cosine similarity is >= 0.9999.

Needs PyTorch and transformers (not in Debian; run it where pip works, e.g. the project's GPU
machine). With --out DIR it also writes, for the first model, the exported model.pt and the
inputs and transformers' embeddings in make_tiny_clip.py's layout, so that LibTorch 1.13 can
check an archive written by a newer PyTorch:
  IMAGESEARCH_TINY_CLIP_DIR=DIR imagesearch_encoder_test \
      "tiny CLIP: LibTorch embeddings match the Python reference"
"""

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

try:
    import torch
except ImportError:
    sys.exit("gpu_check: needs PyTorch")
try:
    import transformers
    from transformers import CLIPConfig, CLIPModel
except ImportError:
    sys.exit("gpu_check: needs Hugging Face transformers (pip install transformers); Debian's "
             "python3-torch has none, so run this where transformers is installed")

import export_clip  # noqa: E402
from make_tiny_clip import randomize_, sample_images, sample_tokens  # noqa: E402

CONFIGS = {
    # name: (text_config, vision_config, projection_dim)
    "quick_gelu": (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
                   dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384,
                        image_size=64, patch_size=16),
                   32),
    "gelu_eps1e-6": (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
                          hidden_act="gelu", layer_norm_eps=1e-6),
                     dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=160,
                          image_size=48, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6),
                     24),
}
TEXT_COMMON = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                   pad_token_id=1)


def features(out):
    """transformers >= 5 returns BaseModelOutputWithPooling (projected features in pooler_output)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def l2n(x):
    return x / x.norm(dim=-1, keepdim=True)


def min_cos(a, b):
    return (l2n(a.double()) * l2n(b.double())).sum(-1).min().item()


def vocab_file(tmp):
    # The vocabulary does not affect embeddings, and the real one (3 MB unpacked) would push the
    # --out archive over what the GPU machine sends back: a well-formed stand-in will do.
    path = os.path.join(tmp, "stand_in_vocab.txt")
    with open(path, "w") as f:
        f.write("#version: 0.2\n" + "a b\n" * export_clip.CLIP_NUM_MERGES)
    return path


def check(name, tmp, out_dir, devices):
    text_cfg, vision_cfg, proj = CONFIGS[name]
    config = CLIPConfig(text_config=dict(TEXT_COMMON, **text_cfg), vision_config=vision_cfg, projection_dim=proj)
    torch.manual_seed(0)
    hf = CLIPModel(config).eval()
    randomize_(hf, 1234)
    hf_dir = os.path.join(tmp, name)
    hf.save_pretrained(hf_dir)
    size = vision_cfg["image_size"]
    try:
        from transformers import CLIPImageProcessor
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(hf_dir)
    except Exception as e:  # the exporter falls back to CLIP defaults
        print(f"  (no preprocessor_config.json: {e})")
    print(f"[{name}] saved: {sorted(os.listdir(hf_dir))}")

    pre = os.path.join(hf_dir, "preprocessor_config.json")
    if os.path.exists(pre):
        with open(pre) as f:
            keys = ("size", "crop_size", "resample", "do_center_crop", "image_mean", "image_std")
            print(f"[{name}] preprocessor_config.json: " + json.dumps({k: v for k, v in json.load(f).items() if k in keys}))
    archive = os.path.join(out_dir or tmp, "model.pt" if out_dir else f"{name}.pt")
    args = [hf_dir, "--out", archive, "--vocab", vocab_file(tmp), "--name", f"hf_{name}"]
    rc = export_clip.main(args)
    if rc != 0 and os.path.exists(pre):
        print(f"[{name}] FAIL: export with preprocessor_config.json failed; retrying without it")
        os.remove(pre)
        rc = export_clip.main(args)
        ok_pre = False
    else:
        ok_pre = True
    if rc != 0:
        print(f"[{name}] FAIL: export failed")
        return False

    images_u8 = sample_images(size)
    mean = torch.tensor(export_clip.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(export_clip.CLIP_STD).view(1, 3, 1, 1)
    pixels = (images_u8.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    tokens = sample_tokens(77)
    ok = ok_pre
    results = []
    ref_cpu = None
    for device in devices:
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        model = hf.to(device)
        with torch.no_grad():
            hf_img = l2n(features(model.get_image_features(pixel_values=pixels.to(device))).float())
            hf_txt = l2n(features(model.get_text_features(input_ids=tokens.to(device))).float())
            both = model(input_ids=tokens.to(device), pixel_values=pixels.to(device))
        # get_*_features must agree with the forward's image_embeds / text_embeds.
        consistent = min(min_cos(hf_img, both.image_embeds), min_cos(hf_txt, both.text_embeds))
        if consistent < 0.99999:
            print(f"[{name}] WARNING: get_*_features and forward() disagree (min cos {consistent})")
        if device == "cpu":
            ref_cpu = (hf_img, hf_txt)
        exported = torch.jit.load(archive, map_location=device)
        with torch.no_grad():
            ours_img = exported.encode_image(pixels.to(device))
            ours_txt = exported.encode_text(tokens.to(device))
        for what, a, b in (("image", ours_img, hf_img), ("text", ours_txt, hf_txt)):
            cos = min_cos(a, b)
            diff = (a.float() - b.float()).abs().max().item()
            passed = cos >= 0.9999
            ok &= passed
            results.append(f"[{name}] {device:4s} {what:5s}: min cos {cos:.8f}, max |diff| {diff:.2e} "
                           f"{'OK' if passed else 'FAIL'}")
    for r in results:
        print(r)

    if out_dir and ref_cpu is not None:
        hf_img, hf_txt = ref_cpu
        images_u8.numpy().tofile(os.path.join(out_dir, "images.u8"))
        tokens.numpy().astype("<i8").tofile(os.path.join(out_dir, "tokens.i64"))
        hf_img.cpu().numpy().astype("<f4").tofile(os.path.join(out_dir, "image_embeds.f32"))
        hf_txt.cpu().numpy().astype("<f4").tofile(os.path.join(out_dir, "text_embeds.f32"))
        with open(os.path.join(out_dir, "refs.json"), "w") as f:
            json.dump({"num_images": int(images_u8.shape[0]), "image_size": size,
                       "num_texts": int(tokens.shape[0]), "context_length": 77, "embed_dim": proj,
                       "images": "images.u8", "tokens": "tokens.i64", "image_embeds": "image_embeds.f32",
                       "text_embeds": "text_embeds.f32", "reference": f"transformers {transformers.__version__}",
                       "torch": torch.__version__}, f, indent=2)
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the first model's export and references here")
    args = p.parse_args()
    start = time.time()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, devices {devices}"
          + (f" ({torch.cuda.get_device_name(0)})" if "cuda" in devices else ""))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(CONFIGS):
            try:
                ok &= check(name, tmp, args.out if i == 0 else None, devices)
            except Exception:
                traceback.print_exc()
                print(f"[{name}] FAIL: exception")
                ok = False
    print(f"gpu_check: {'PASS' if ok else 'FAIL'} in {time.time() - start:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
