#!/usr/bin/env python3
"""Tests of export_clip.py and clip_model.py on small random CLIPs (CPU, a few seconds).

Run: /usr/bin/python3 tools/export_clip/export_clip_test.py
Needs the CLIP BPE vocab: $IMAGESEARCH_CLIP_VOCAB, default tests/data/clip/bpe_simple_vocab_16e6.txt.gz.
"""

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import unittest

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export_clip  # noqa: E402
from clip_model import CLIP  # noqa: E402
from make_tiny_clip import make_tiny_clip, randomize_, sample_images, sample_tokens, l2n  # noqa: E402

VOCAB = os.environ.get("IMAGESEARCH_CLIP_VOCAB") or os.path.join(
    HERE, "..", "..", "tests", "data", "clip", "bpe_simple_vocab_16e6.txt.gz")

# Smaller than the C++ test's model: width 64 with 2 heads of 32 (so heads != width // 64,
# which the exporter must be told for state dicts and reads from HF configs).
SMALL = dict(embed_dim=16, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
             context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=2,
             transformer_layers=2, vision_heads=2)
HEADS_FLAGS = ["--vision-heads", "2", "--text-heads", "2"]


def openai_to_hf(sd):
    """The inverse of export_clip.hf_to_openai, written independently: OpenAI keys -> transformers CLIPModel."""
    hf = {}

    def layers(src, dst):
        i = 0
        while f"{src}{i}.ln_1.weight" in sd:
            s, d = f"{src}{i}.", f"{dst}{i}."
            q, k, v = sd[s + "attn.in_proj_weight"].chunk(3)
            qb, kb, vb = sd[s + "attn.in_proj_bias"].chunk(3)
            for name, w, b in (("q", q, qb), ("k", k, kb), ("v", v, vb)):
                hf[d + f"self_attn.{name}_proj.weight"] = w
                hf[d + f"self_attn.{name}_proj.bias"] = b
            for theirs, ours in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"), ("layer_norm2", "ln_2")):
                for p in ("weight", "bias"):
                    hf[f"{d}{theirs}.{p}"] = sd[f"{s}{ours}.{p}"]
            i += 1

    v = "vision_model."
    hf[v + "embeddings.class_embedding"] = sd["visual.class_embedding"]
    hf[v + "embeddings.patch_embedding.weight"] = sd["visual.conv1.weight"]
    hf[v + "embeddings.position_embedding.weight"] = sd["visual.positional_embedding"]
    hf[v + "embeddings.position_ids"] = torch.arange(sd["visual.positional_embedding"].shape[0])[None]
    for theirs, ours in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            hf[f"{v}{theirs}.{p}"] = sd[f"visual.{ours}.{p}"]
    layers("visual.transformer.resblocks.", v + "encoder.layers.")
    hf["visual_projection.weight"] = sd["visual.proj"].t()
    t = "text_model."
    hf[t + "embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    hf[t + "embeddings.position_embedding.weight"] = sd["positional_embedding"]
    for p in ("weight", "bias"):
        hf[f"{t}final_layer_norm.{p}"] = sd[f"ln_final.{p}"]
    layers("transformer.resblocks.", t + "encoder.layers.")
    hf["text_projection.weight"] = sd["text_projection"].t()
    hf["logit_scale"] = sd["logit_scale"]
    return {k: v.contiguous() for k, v in hf.items()}


def hf_config(cfg, act="quick_gelu"):
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg["embed_dim"],
        "text_config": {"hidden_size": cfg["transformer_width"], "num_hidden_layers": cfg["transformer_layers"],
                        "num_attention_heads": cfg["transformer_heads"],
                        "intermediate_size": 4 * cfg["transformer_width"],
                        "max_position_embeddings": cfg["context_length"], "vocab_size": cfg["vocab_size"],
                        "hidden_act": act, "eos_token_id": 49407, "bos_token_id": 49406},
        "vision_config": {"hidden_size": cfg["vision_width"], "num_hidden_layers": cfg["vision_layers"],
                          "num_attention_heads": cfg["vision_heads"], "intermediate_size": 4 * cfg["vision_width"],
                          "image_size": cfg["image_resolution"], "patch_size": cfg["vision_patch_size"],
                          "hidden_act": act},
    }


def openai_reference_encode(model: CLIP, image, text):
    """OpenAI's original forward (LND layout, F.multi_head_attention_forward) on our model's weights.

    Checks clip_model.py's rewritten attention against torch's own multi-head attention.
    """
    def block_forward(blk, x, mask):
        y = blk.ln_1(x)
        a = blk.attn
        y, _ = F.multi_head_attention_forward(
            y, y, y, y.shape[-1], a.heads, a.in_proj_weight, a.in_proj_bias, None, None, False, 0.0,
            a.out_proj.weight, a.out_proj.bias, training=False, need_weights=False, attn_mask=mask)
        x = x + y
        return x + blk.mlp(blk.ln_2(x))

    vis = model.visual
    x = vis.conv1(image)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([vis.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = vis.ln_pre(x + vis.positional_embedding).permute(1, 0, 2)  # NLD -> LND
    for blk in vis.transformer.resblocks:
        x = block_forward(blk, x, None)
    img = vis.ln_post(x.permute(1, 0, 2)[:, 0, :]) @ vis.proj

    x = (model.token_embedding(text) + model.positional_embedding).permute(1, 0, 2)
    for blk in model.transformer.resblocks:
        x = block_forward(blk, x, model.build_attention_mask())
    x = model.ln_final(x.permute(1, 0, 2))
    txt = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ model.text_projection
    return img, txt


def run_export(args):
    """Runs export_clip.main; returns (exit code, stderr text)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = export_clip.main(args)
    return rc, err.getvalue()


def load_export(path):
    files = {"model.json": "", "bpe_vocab.txt": ""}
    module = torch.jit.load(path, map_location="cpu", _extra_files=files)
    return module, json.loads(files["model.json"]), files["bpe_vocab.txt"]


class ExportClipTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(VOCAB):
            raise unittest.SkipTest(f"CLIP vocab {VOCAB} not found (set IMAGESEARCH_CLIP_VOCAB)")
        torch.set_num_threads(1)
        cls.tmp = tempfile.mkdtemp(prefix="export_clip_test_")
        cls.model = make_tiny_clip(seed=1, **SMALL)
        cls.images = sample_images(SMALL["image_resolution"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        cls.tokens = sample_tokens(SMALL["context_length"])
        with torch.no_grad():
            cls.ref_image = l2n(cls.model.encode_image(cls.images))
            cls.ref_text = l2n(cls.model.encode_text(cls.tokens))
        cls.ckpt = os.path.join(cls.tmp, "small_openai.pt")
        torch.save(cls.model.state_dict(), cls.ckpt)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def export_ok(self, args):
        rc, err = run_export(args)
        self.assertEqual(rc, 0, err)

    def assert_matches_reference(self, archive, image_tol=1e-5, text_tol=1e-5):
        module, meta, _ = load_export(archive)
        with torch.no_grad():
            img = module.encode_image(self.images)
            self.assertLess((img - self.ref_image).abs().max().item(), image_tol)
            if meta["text"] is not None:
                txt = module.encode_text(self.tokens)
                self.assertLess((txt - self.ref_text).abs().max().item(), text_tol)
        return meta

    def test_clip_model_matches_torch_multi_head_attention(self):
        with torch.no_grad():
            img, txt = openai_reference_encode(self.model, self.images, self.tokens)
            self.assertLess((img - self.model.encode_image(self.images)).abs().max().item(), 1e-5)
            self.assertLess((txt - self.model.encode_text(self.tokens)).abs().max().item(), 1e-5)

    def test_openai_state_dict(self):
        out = self.path("openai.pt")
        self.export_ok([self.ckpt, "--out", out, "--vocab", VOCAB] + HEADS_FLAGS)
        meta = self.assert_matches_reference(out)
        self.assertEqual(meta["format"], 1)
        self.assertEqual(meta["name"], "small_openai")
        self.assertTrue(meta["version"].startswith("sha256:"))
        self.assertEqual((meta["embed_dim"], meta["image_size"]), (16, 32))
        self.assertEqual((meta["resize"], meta["crop"], meta["interpolation"], meta["metric"]),
                         ("shortest_edge", "center", "bicubic", "cosine"))
        self.assertEqual(meta["mean"], export_clip.CLIP_MEAN)
        self.assertEqual(meta["std"], export_clip.CLIP_STD)
        self.assertEqual(meta["text"], {"tokenizer": "clip_bpe", "context_length": 77, "vocab_file": "bpe_vocab.txt",
                                        "vocab_size": 49408, "sot_token": 49406, "eot_token": 49407,
                                        "lower_case": True})
        _, _, vocab = load_export(out)
        self.assertEqual(vocab.decode("utf-8"), export_clip.read_vocab(VOCAB))

    def test_wrong_head_count_changes_the_model(self):
        # The default (width // 64 = 1 head) is not this model: embeddings must differ, which shows
        # the head flags matter and the comparison above is sensitive.
        out = self.path("one_head.pt")
        self.export_ok([self.ckpt, "--out", out, "--vocab", VOCAB])
        module, _, _ = load_export(out)
        with torch.no_grad():
            self.assertGreater((module.encode_image(self.images) - self.ref_image).abs().max().item(), 1e-3)

    def test_hugging_face_directory_round_trip(self):
        hf_dir = self.path("hf_clip")
        os.makedirs(hf_dir, exist_ok=True)
        export_clip.write_safetensors(os.path.join(hf_dir, "model.safetensors"),
                                      openai_to_hf(self.model.state_dict()))
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump(hf_config(SMALL), f)
        shutil.copy(VOCAB, os.path.join(hf_dir, export_clip.VOCAB_DEFAULT_NAME))  # found without --vocab
        out = self.path("hf.pt")
        self.export_ok([hf_dir, "--out", out])
        meta = self.assert_matches_reference(out)
        self.assertEqual(meta["source"]["kind"], "hf")
        # Same embeddings as the export of the OpenAI-layout original.
        openai_out = self.path("openai_for_hf.pt")
        self.export_ok([self.ckpt, "--out", openai_out, "--vocab", VOCAB] + HEADS_FLAGS)
        a, b = load_export(out)[0], load_export(openai_out)[0]
        with torch.no_grad():
            self.assertLess((a.encode_image(self.images) - b.encode_image(self.images)).abs().max().item(), 1e-6)
            self.assertLess((a.encode_text(self.tokens) - b.encode_text(self.tokens)).abs().max().item(), 1e-6)

    def test_hugging_face_state_dict_file_and_preprocessor(self):
        # A plain HF-layout state dict (pytorch_model.bin) in a directory with a
        # preprocessor_config.json whose mean/std/resample differ from CLIP's.
        hf_dir = self.path("hf_bin")
        os.makedirs(hf_dir, exist_ok=True)
        torch.save(openai_to_hf(self.model.state_dict()), os.path.join(hf_dir, "pytorch_model.bin"))
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump(hf_config(SMALL), f)
        with open(os.path.join(hf_dir, "preprocessor_config.json"), "w") as f:
            json.dump({"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "resample": 2,
                       "do_center_crop": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}, f)
        out = self.path("hf_bin.pt")
        self.export_ok([hf_dir, "--out", out, "--vocab", VOCAB])
        meta = self.assert_matches_reference(out)
        self.assertEqual((meta["interpolation"], meta["mean"], meta["std"]),
                         ("bilinear", [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]))
        # The same weights as one file, auto-detected as HF layout by its keys.
        out2 = self.path("hf_file.pt")
        self.export_ok([os.path.join(hf_dir, "pytorch_model.bin"), "--out", out2, "--vocab", VOCAB] + HEADS_FLAGS)
        self.assertEqual(self.assert_matches_reference(out2)["source"]["kind"], "hf_state_dict")

    def test_gelu_model_from_hf_config(self):
        model = make_tiny_clip(seed=2, act="gelu", **SMALL)
        hf_dir = self.path("hf_gelu")
        os.makedirs(hf_dir, exist_ok=True)
        export_clip.write_safetensors(os.path.join(hf_dir, "model.safetensors"), openai_to_hf(model.state_dict()))
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump(hf_config(SMALL, act="gelu"), f)
        out = self.path("hf_gelu.pt")
        self.export_ok([hf_dir, "--out", out, "--vocab", VOCAB])
        module = load_export(out)[0]
        with torch.no_grad():
            ref = l2n(model.encode_image(self.images))
            self.assertLess((module.encode_image(self.images) - ref).abs().max().item(), 1e-5)

    def test_open_clip_training_checkpoint(self):
        ckpt = self.path("epoch_1.pt")
        torch.save({"epoch": 1, "name": "test",
                    "state_dict": {"module." + k: v for k, v in self.model.state_dict().items()}}, ckpt)
        out = self.path("open_clip.pt")
        rc, err = run_export([ckpt, "--out", out, "--source", "open_clip", "--vocab", VOCAB] + HEADS_FLAGS)
        self.assertEqual(rc, 2)
        self.assertIn("pass --act quick_gelu", err)
        self.export_ok([ckpt, "--out", out, "--source", "open_clip", "--act", "quick_gelu", "--vocab", VOCAB,
                        "--name", "oc", "--version", "v1"] + HEADS_FLAGS)
        meta = self.assert_matches_reference(out)
        self.assertEqual((meta["name"], meta["version"], meta["source"]["kind"]),
                         ("oc", "v1", "open_clip_state_dict"))

    def test_openai_jit_archive(self):
        # OpenAI distributes TorchScript archives of the CLIP module in float16, with extra buffers.
        class Scriptable(CLIP):
            def forward(self, image: torch.Tensor, text: torch.Tensor):
                return self.encode_image(image), self.encode_text(text)

        model = Scriptable(**SMALL)
        model.load_state_dict(self.model.state_dict())
        model.half()
        del model.context_length, model.vocab_size  # plain attributes here, buffers there
        model.register_buffer("input_resolution", torch.tensor(32))
        model.register_buffer("context_length", torch.tensor(77))
        model.register_buffer("vocab_size", torch.tensor(49408))
        archive = self.path("ViT-tiny.pt")
        torch.jit.save(torch.jit.script(model.eval()), archive)
        out = self.path("from_jit.pt")
        self.export_ok([archive, "--out", out, "--vocab", VOCAB] + HEADS_FLAGS)
        module, meta, _ = load_export(out)
        self.assertEqual(meta["source"]["kind"], "openai_jit")
        # The export is float32 of the float16-rounded weights.
        rounded = CLIP(**SMALL)
        rounded.load_state_dict({k: v.half().float() for k, v in self.model.state_dict().items()})
        rounded.eval()
        with torch.no_grad():
            ref = l2n(rounded.encode_text(self.tokens))
            self.assertLess((module.encode_text(self.tokens) - ref).abs().max().item(), 1e-5)

    def test_modified_resnet_image_only(self):
        cfg = dict(SMALL, vision_layers=(1, 2, 1, 1), vision_width=16, vision_patch_size=None, vision_heads=None)
        model = CLIP(**cfg)
        randomize_(model, 3)
        model.eval()
        sd = {k: v for k, v in model.state_dict().items() if k.startswith("visual.")}
        ckpt = self.path("rn.pt")
        torch.save(sd, ckpt)
        out = self.path("rn_export.pt")
        self.export_ok([ckpt, "--out", out])  # image-only: no vocab needed
        module, meta, _ = load_export(out)
        self.assertIsNone(meta["text"])
        self.assertFalse(hasattr(module, "encode_text"))
        with torch.no_grad():
            ref = l2n(model.encode_image(self.images))
            self.assertLess((module.encode_image(self.images) - ref).abs().max().item(), 1e-5)

    def test_no_text(self):
        out = self.path("no_text.pt")
        self.export_ok([self.ckpt, "--out", out, "--no-text"] + HEADS_FLAGS)
        self.assertIsNone(self.assert_matches_reference(out)["text"])

    def test_errors(self):
        out = self.path("err.pt")
        cases = [
            ([self.ckpt, "--out", out], "pass --vocab path/to/bpe_simple_vocab_16e6.txt.gz"),
            ([self.path("missing.pt"), "--out", out], "does not exist"),
            ([self.ckpt, "--out", out, "--vocab", os.path.join(HERE, "README.md")], "is not a CLIP BPE merges file"),
            ([self.tmp, "--out", out], "no config.json"),
        ]
        bad = self.path("not_clip.pt")
        torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
        cases.append(([bad, "--out", out], "not an OpenAI/open_clip CLIP layout"))
        extra = self.path("extra_key.pt")
        torch.save(dict(self.model.state_dict(), **{"visual.attn_pool.weight": torch.zeros(1)}), extra)
        cases.append(([extra, "--out", out, "--vocab", VOCAB], "unexpected: visual.attn_pool.weight"))
        for args, message in cases:
            with self.subTest(args=args):
                rc, err = run_export(args)
                self.assertEqual(rc, 2)
                self.assertIn(message, err)
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main(verbosity=2)
