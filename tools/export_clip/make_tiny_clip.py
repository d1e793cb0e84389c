#!/usr/bin/env python3
"""Builds the tiny CLIP test model and its Python-side reference embeddings.

A randomly initialised (fixed seed) small model of the real CLIP ViT architecture, both towers,
saved as an OpenAI-layout state dict and exported with export_clip.py, exactly as a user would
export a real checkpoint. The C++ encoder test (libs/encoder/encoder_test.cc) loads the exports
and compares LibTorch's embeddings with the references computed here by the eager model.

Writes into --out:
  openai_state_dict.pt   the checkpoint (OpenAI key layout)
  model.pt               export with both towers (text: CLIP BPE vocab, context 77)
  image_only.pt          export with --no-text
  bad_dim.pt             image_only.pt whose model.json claims a wrong embed_dim
  no_model_json.pt       image_only.pt without the model.json extra file
  no_encode_text.pt      image_only.pt whose model.json declares a text tower
  images.u8              uint8 [num_images, image_size, image_size, 3] RGB HWC inputs
  tokens.i64             int64 little-endian [num_texts, context_length] token ids
  image_embeds.f32       float32 [num_images, embed_dim], L2-normalised, eager model
  text_embeds.f32        float32 [num_texts, embed_dim], L2-normalised, eager model
  refs.json              shapes and file names of the above
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_clip  # noqa: E402
from clip_model import CLIP  # noqa: E402

TINY_CONFIG = dict(embed_dim=32, image_resolution=64, vision_layers=2, vision_width=128, vision_patch_size=16,
                   context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                   transformer_layers=2)
SEED = 20240601


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Gives every parameter and batch-norm statistic a random value of a sane scale.

    CLIP's own init leaves biases at zero and LayerNorms at identity, which would let a wrong
    mapping of those tensors go unnoticed; here every tensor matters.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):  # LayerNorm / BatchNorm scales
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() <= 1:  # biases, class embedding, logit scale
                scale = 0.5 if "class_embedding" in name else 0.1
                p.copy_(scale * torch.randn(p.shape, generator=gen))
            elif "embedding" in name and p.dim() == 2:  # token / positional embeddings: std 0.5
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:  # x @ proj matrices are [in, out]; Linear / conv weights are [out, in, ...]
                fan_in = p.shape[0] if name in ("visual.proj", "text_projection") else p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def make_tiny_clip(seed: int = SEED, **overrides) -> CLIP:
    torch.manual_seed(seed)
    model = CLIP(**dict(TINY_CONFIG, **overrides))
    randomize_(model, seed)
    return model.eval()


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def reference_image_embeds(model: CLIP, images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """images_u8: [N, S, S, 3] uint8 RGB HWC -> [N, D] L2-normalised (the contract's normalisation)."""
    x = images_u8.permute(0, 3, 1, 2).to(torch.float64) / 255.0
    x = (x - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        return l2n(model.encode_image(x.to(torch.float32)))


def reference_text_embeds(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return l2n(model.encode_text(tokens))


def sample_images(size: int) -> torch.Tensor:
    """Four deterministic images with different structure, [4, size, size, 3] uint8."""
    y = torch.arange(size).view(size, 1).expand(size, size)
    x = torch.arange(size).view(1, size).expand(size, size)
    gradient = torch.stack([x * 255 // (size - 1), y * 255 // (size - 1), (x + y) * 255 // (2 * size - 2)], -1)
    checker = (((x // 8 + y // 8) % 2) * 200 + 20).unsqueeze(-1).expand(size, size, 3)
    checker = checker * torch.tensor([1.0, 0.5, 0.25])
    noise = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(7))
    grey = torch.full((size, size, 3), 128)
    return torch.stack([gradient, checker, noise, grey]).to(torch.uint8)


def sample_tokens(context_length: int) -> torch.Tensor:
    """Token sequences: empty text, 'a photo of a dog', 'a diagram', and one filling the context."""
    sot, eot = export_clip.SOT_TOKEN, export_clip.EOT_TOKEN
    seqs = [[sot, eot],
            [sot, 320, 1125, 539, 320, 1929, eot],
            [sot, 320, 22697, eot],
            [sot] + [(i * 613) % 49000 + 256 for i in range(context_length - 2)] + [eot]]
    tokens = torch.zeros(len(seqs), context_length, dtype=torch.int64)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = torch.tensor(s)
    return tokens


def resave(src: str, dst: str, model_json) -> None:
    """Copies a TorchScript archive with a different model.json (None: none at all)."""
    module = torch.jit.load(src, map_location="cpu")
    extra = {} if model_json is None else {"model.json": json.dumps(model_json)}
    torch.jit.save(module, dst, _extra_files=extra)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--vocab", required=True, help="bpe_simple_vocab_16e6.txt.gz")
    args = p.parse_args(argv)
    start = time.time()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731

    model = make_tiny_clip()
    torch.save(model.state_dict(), out("openai_state_dict.pt"))
    for extra_args, name in (([], "model.pt"), (["--no-text"], "image_only.pt")):
        rc = export_clip.main([out("openai_state_dict.pt"), "--out", out(name), "--vocab", args.vocab,
                               "--name", "tiny_clip", "--version", f"seed-{SEED}"] + extra_args)
        if rc != 0:
            return rc

    files = {"model.json": ""}
    torch.jit.load(out("image_only.pt"), map_location="cpu", _extra_files=files)
    meta = json.loads(files["model.json"])
    resave(out("image_only.pt"), out("bad_dim.pt"), dict(meta, embed_dim=meta["embed_dim"] + 1))
    resave(out("image_only.pt"), out("no_model_json.pt"), None)
    resave(out("image_only.pt"), out("no_encode_text.pt"),
           dict(meta, text={"tokenizer": "clip_bpe", "context_length": 77, "vocab_file": "bpe_vocab.txt",
                            "sot_token": export_clip.SOT_TOKEN, "eot_token": export_clip.EOT_TOKEN}))

    size, ctx = TINY_CONFIG["image_resolution"], TINY_CONFIG["context_length"]
    images = sample_images(size)
    tokens = sample_tokens(ctx)
    image_embeds = reference_image_embeds(model, images, export_clip.CLIP_MEAN, export_clip.CLIP_STD)
    text_embeds = reference_text_embeds(model, tokens)
    images.numpy().tofile(out("images.u8"))
    tokens.numpy().astype("<i8").tofile(out("tokens.i64"))
    image_embeds.numpy().astype("<f4").tofile(out("image_embeds.f32"))
    text_embeds.numpy().astype("<f4").tofile(out("text_embeds.f32"))
    refs = {"num_images": images.shape[0], "image_size": size, "num_texts": tokens.shape[0],
            "context_length": ctx, "embed_dim": TINY_CONFIG["embed_dim"], "images": "images.u8",
            "tokens": "tokens.i64", "image_embeds": "image_embeds.f32", "text_embeds": "text_embeds.f32",
            "seed": SEED, "torch": torch.__version__}
    with open(out("refs.json"), "w") as f:
        json.dump(refs, f, indent=2)
    print(f"make_tiny_clip: wrote {args.out} in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
