#!/usr/bin/env python3
"""Export a CLIP checkpoint as an imagesearch model (libs/encoder/MODEL_CONTRACT.md).

Sources (--source, default auto):
  openai     OpenAI CLIP: the JIT archive (ViT-B-32.pt, ...) or a state dict in its key layout.
  open_clip  an open_clip state dict with OpenAI's key layout (open_clip_pytorch_model.bin,
             *.safetensors, or a training checkpoint {"state_dict": {"module.*": ...}}).
             open_clip models differ in activation, so --act is required.
  hf         a Hugging Face CLIPModel directory (config.json + model.safetensors or
             pytorch_model.bin, sharded or not), or a hub id when huggingface_hub is
             installed and the hub is reachable. Read directly: transformers is not needed.

The output is one TorchScript archive with encode_image (and encode_text), both returning
L2-normalised float32 embeddings, plus the extra files model.json and bpe_vocab.txt.
After writing it, the exporter reloads the archive and checks it against the eager model.

Example:
  export_clip.py ViT-B-32.pt --out clip-vit-b32.pt --vocab bpe_simple_vocab_16e6.txt.gz
"""

import argparse
import gzip
import hashlib
import json
import os
import re
import struct
import sys
import zipfile
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_model import ACTIVATIONS, CLIP, config_from_state_dict  # noqa: E402

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SOT_TOKEN = 49406
EOT_TOKEN = 49407
CLIP_VOCAB_SIZE = 49408          # 256 bytes + 256 bytes</w> + 48894 merges + SOT + EOT
CLIP_NUM_MERGES = 49152 - 256 - 2
VOCAB_FILE = "bpe_vocab.txt"
VOCAB_DEFAULT_NAME = "bpe_simple_vocab_16e6.txt.gz"
# Keys some checkpoints carry that are not weights of the model.
IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask",
                "text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


class ExportError(Exception):
    """A problem with the user's inputs; main() prints it without a traceback."""


# ----------------------------------------------------------------------------------------------
# Reading checkpoints
# ----------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """Reads a .safetensors file (8-byte little-endian header size, JSON header, raw data)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if len(data) < 8:
        raise ExportError(f"{path}: too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    if 8 + header_len > len(data):
        raise ExportError(f"{path}: safetensors header size {header_len} exceeds the file")
    header = json.loads(bytes(data[8:8 + header_len]).decode("utf-8"))
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ExportError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = info["shape"]
        count = 1
        for s in shape:
            count *= s
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        t = torch.frombuffer(data, dtype=dtype, count=count, offset=base + begin)
        if t.element_size() * count != end - begin:
            raise ExportError(f"{path}: tensor {name} byte range does not match its shape")
        tensors[name] = t.reshape(shape).clone()
    return tensors


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor]) -> None:
    """Writes float32 tensors as a .safetensors file (used by the tests)."""
    header = {}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous().cpu()
        blob = t.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    header_bytes = json.dumps(header).encode("utf-8")
    header_bytes += b" " * ((8 - len(header_bytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_weights_file(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Returns (state dict, kind) for a JIT archive, torch.save'd file or .safetensors file."""
    if path.endswith(".safetensors"):
        return read_safetensors(path), "safetensors"
    if _is_torchscript_archive(path):
        module = torch.jit.load(path, map_location="cpu")
        return dict(module.state_dict()), "jit"
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # pickle errors come in many types
        raise ExportError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # open_clip / Lightning training checkpoints
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(f"{path} does not hold a state dict (a dict of tensors)")
    return obj, "state_dict"


def _strip_prefix(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# ----------------------------------------------------------------------------------------------
# Hugging Face CLIPModel -> OpenAI layout
# ----------------------------------------------------------------------------------------------

# Defaults of transformers' CLIPTextConfig / CLIPVisionConfig, for keys a config.json omits.
HF_TEXT_DEFAULTS = {"num_attention_heads": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
HF_VISION_DEFAULTS = {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def _hf_layers(prefix: str, out_prefix: str, sd: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor]) -> None:
    n = len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})
    for i in range(n):
        p, o = f"{prefix}{i}.", f"{out_prefix}{i}."
        out[o + "attn.in_proj_weight"] = torch.cat(
            [sd.pop(p + f"self_attn.{x}_proj.weight") for x in ("q", "k", "v")], dim=0)
        out[o + "attn.in_proj_bias"] = torch.cat(
            [sd.pop(p + f"self_attn.{x}_proj.bias") for x in ("q", "k", "v")], dim=0)
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"), ("ln_2", "layer_norm2")):
            out[o + ours + ".weight"] = sd.pop(p + theirs + ".weight")
            out[o + ours + ".bias"] = sd.pop(p + theirs + ".bias")


def hf_to_openai(hf_sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Maps a transformers CLIPModel state dict onto OpenAI's key layout.

    HF keeps q/k/v projections separate where OpenAI (nn.MultiheadAttention) stacks them in
    in_proj_weight; HF projections are nn.Linear (weight = OpenAI's matrix transposed).
    """
    sd = dict(hf_sd)
    for k in IGNORED_KEYS:
        sd.pop(k, None)
    out: Dict[str, torch.Tensor] = {}
    try:
        v = "vision_model."
        out["visual.class_embedding"] = sd.pop(v + "embeddings.class_embedding")
        out["visual.conv1.weight"] = sd.pop(v + "embeddings.patch_embedding.weight")
        out["visual.positional_embedding"] = sd.pop(v + "embeddings.position_embedding.weight")
        for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
            out[f"visual.{ours}.weight"] = sd.pop(f"{v}{theirs}.weight")
            out[f"visual.{ours}.bias"] = sd.pop(f"{v}{theirs}.bias")
        _hf_layers(v + "encoder.layers.", "visual.transformer.resblocks.", sd, out)
        out["visual.proj"] = sd.pop("visual_projection.weight").t().contiguous()
        if "text_model.embeddings.token_embedding.weight" in sd:
            t = "text_model."
            out["token_embedding.weight"] = sd.pop(t + "embeddings.token_embedding.weight")
            out["positional_embedding"] = sd.pop(t + "embeddings.position_embedding.weight")
            out["ln_final.weight"] = sd.pop(t + "final_layer_norm.weight")
            out["ln_final.bias"] = sd.pop(t + "final_layer_norm.bias")
            _hf_layers(t + "encoder.layers.", "transformer.resblocks.", sd, out)
            out["text_projection"] = sd.pop("text_projection.weight").t().contiguous()
    except KeyError as e:
        raise ExportError(f"Hugging Face CLIPModel weights lack {e.args[0]}") from e
    if "logit_scale" in sd:
        out["logit_scale"] = sd.pop("logit_scale")
    if sd:
        raise ExportError("Hugging Face weights have keys a CLIPModel does not: "
                          + ", ".join(sorted(sd)[:10]))
    return out


def _hf_overrides(config: dict) -> dict:
    text = dict(HF_TEXT_DEFAULTS, **config.get("text_config", {}) or {})
    vision = dict(HF_VISION_DEFAULTS, **config.get("vision_config", {}) or {})
    acts = {text["hidden_act"], vision["hidden_act"]}
    if len(acts) != 1:
        raise ExportError(f"text and vision towers use different activations {sorted(acts)}; unsupported")
    act = HF_ACTIVATIONS.get(acts.pop())
    if act is None:
        raise ExportError(f"unsupported hidden_act {text['hidden_act']!r}")
    if abs(text["layer_norm_eps"] - vision["layer_norm_eps"]) > 0:
        raise ExportError("text and vision towers use different layer_norm_eps; unsupported")
    return {"vision_heads": vision["num_attention_heads"], "transformer_heads": text["num_attention_heads"],
            "act": act, "eps": float(text["layer_norm_eps"])}


def _hf_preprocess(directory: str) -> Optional[dict]:
    path = os.path.join(directory, "preprocessor_config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        pc = json.load(f)
    size = pc.get("size", 224)
    if isinstance(size, dict):
        if "shortest_edge" not in size:
            raise ExportError(f"{path}: size {size} is not a shortest_edge resize; unsupported")
        size = size["shortest_edge"]
    crop = pc.get("crop_size", size)
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("width"))
    resample = pc.get("resample", 3)
    if isinstance(resample, str):  # an enum name, e.g. "BICUBIC" or "PILImageResampling.BICUBIC"
        resample = next((m for m in ("nearest", "bilinear", "bicubic") if m in resample.lower()), None)
    else:
        resample = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(resample)
    if resample is None:
        raise ExportError(f"{path}: resample {pc.get('resample')} is not nearest/bilinear/bicubic")
    if not pc.get("do_center_crop", True) or size != crop:
        raise ExportError(f"{path}: only 'resize shortest edge to N, center crop NxN' is supported "
                          f"(got size {size}, crop {crop})")
    return {"image_size": int(crop), "interpolation": resample,
            "mean": [float(x) for x in pc.get("image_mean", CLIP_MEAN)],
            "std": [float(x) for x in pc.get("image_std", CLIP_STD)]}


def _hf_weight_files(directory: str) -> List[str]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(directory, index)
        if os.path.exists(path):
            with open(path) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(directory, x) for x in files]
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return [path]
    raise ExportError(f"{directory}: no model.safetensors or pytorch_model.bin (or their .index.json)")


def _hf_download(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download  # only for hub ids
    except ImportError as e:
        raise ExportError(f"{repo_id} is not a directory, and huggingface_hub is not installed to fetch it "
                          "(pip install huggingface_hub, or pass a local CLIPModel directory)") from e
    return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.txt.gz"])


# ----------------------------------------------------------------------------------------------
# Source -> model
# ----------------------------------------------------------------------------------------------

class Source:
    """A loaded checkpoint: OpenAI-layout float32 weights plus what the weights do not say."""

    def __init__(self, state_dict, overrides, preprocess, kind, files):
        self.state_dict = state_dict
        self.overrides = overrides      # CLIP() arguments the state dict cannot tell
        self.preprocess = preprocess    # from a HF preprocessor_config.json, or None
        self.kind = kind
        self.files = files              # weight files, hashed for the default version


def _float32(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def load_source(path: str, source: str, act: Optional[str]) -> Source:
    if source == "hf" and not os.path.exists(path):
        path = _hf_download(path)
    if not os.path.exists(path):
        raise ExportError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        if source not in ("auto", "hf"):
            raise ExportError(f"{path} is a directory; only --source hf reads directories")
        config_path = os.path.join(path, "config.json")
        if not os.path.exists(config_path):
            raise ExportError(f"{path}: no config.json (expected a Hugging Face CLIPModel directory)")
        with open(config_path) as f:
            config = json.load(f)
        if config.get("model_type", "clip") != "clip":
            raise ExportError(f"{config_path}: model_type {config.get('model_type')!r} is not 'clip'")
        files = _hf_weight_files(path)
        sd = {}
        for file in files:
            sd.update(load_weights_file(file)[0])
        overrides = _hf_overrides(config)
        if act is not None:
            overrides["act"] = act
        return Source(_float32(hf_to_openai(sd)), overrides, _hf_preprocess(path), "hf", files)

    sd, file_kind = load_weights_file(path)
    sd = _strip_prefix(sd, "module.")
    hf_layout = any(k.startswith("vision_model.") for k in sd)
    if source == "auto":
        source = "hf" if hf_layout else "openai"
    if source == "hf":
        if not hf_layout:
            raise ExportError(f"{path} does not have Hugging Face CLIPModel keys (vision_model.*)")
        sd = hf_to_openai(sd)
        kind = "hf_state_dict"
    else:
        if hf_layout:
            raise ExportError(f"{path} has Hugging Face keys (vision_model.*); use --source hf")
        if source == "open_clip" and act is None:
            raise ExportError("open_clip models differ in activation: pass --act quick_gelu for the OpenAI "
                              "weights and model names ending in -quickgelu, else --act gelu")
        kind = "openai_jit" if file_kind == "jit" else f"{source}_{file_kind}"
    overrides = {"act": act or "quick_gelu"}
    for k in IGNORED_KEYS:
        sd.pop(k, None)
    return Source(_float32(sd), overrides, None, kind, [path])


def build_model(src: Source, vision_heads: Optional[int], text_heads: Optional[int]) -> CLIP:
    try:
        config = config_from_state_dict(src.state_dict)
    except KeyError as e:
        raise ExportError(f"checkpoint lacks {e.args[0]}: not an OpenAI-layout CLIP") from e
    except ValueError as e:
        raise ExportError(str(e)) from e
    config.update(src.overrides)
    if vision_heads:
        config["vision_heads"] = vision_heads
    if text_heads:
        config["transformer_heads"] = text_heads
    model = CLIP(**config)
    missing, unexpected = model.load_state_dict(src.state_dict, strict=False)
    missing = [k for k in missing if k != "logit_scale"]  # not used by the encoders
    if missing or unexpected:
        raise ExportError("checkpoint does not match the OpenAI CLIP layout"
                          + (f"; missing: {', '.join(missing[:8])}" if missing else "")
                          + (f"; unexpected: {', '.join(unexpected[:8])}" if unexpected else ""))
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------

def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    # Written out (not F.normalize) so the scripted graph uses long-stable ops only.
    return x / (x * x).sum(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)


class ImageEncoder(nn.Module):
    """The exported module of an image-only model."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    @torch.jit.export
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return _l2_normalize(self.visual(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encode_image(image)


class ImageTextEncoder(nn.Module):
    """The exported module of a model with both towers."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.clip = clip

    @torch.jit.export
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return _l2_normalize(self.clip.encode_image(image))

    @torch.jit.export
    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return _l2_normalize(self.clip.encode_text(text))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encode_image(image)


def read_vocab(path: str) -> str:
    """Returns the CLIP BPE merges text (gunzipped when the file is .gz), after checking its shape."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ExportError(f"cannot read vocab {path}: {e.strerror}") from e
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExportError(f"vocab {path} is not UTF-8 text") from e
    lines = text.split("\n")
    merges = lines[1:CLIP_NUM_MERGES + 1]
    if len(merges) < CLIP_NUM_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ExportError(f"vocab {path} is not a CLIP BPE merges file (a header line, then at least "
                          f"{CLIP_NUM_MERGES} lines 'a b')")
    return text


def find_vocab(checkpoint: str) -> Optional[str]:
    directory = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    for name in (VOCAB_DEFAULT_NAME, VOCAB_DEFAULT_NAME[:-3]):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    return None


def _sha256_files(files: List[str]) -> str:
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def make_model_json(model: CLIP, with_text: bool, name: str, version: str, preprocess: dict,
                    source: dict) -> dict:
    meta = {
        "format": 1,
        "name": name,
        "version": version,
        "embed_dim": int(model.embed_dim),
        "image_size": int(model.image_resolution),
        "resize": "shortest_edge",
        "crop": "center",
        "interpolation": preprocess["interpolation"],
        "mean": preprocess["mean"],
        "std": preprocess["std"],
        "metric": "cosine",
        "text": None,
        "source": source,
        "exporter": {"tool": "tools/export_clip", "torch": torch.__version__},
    }
    if with_text:
        meta["text"] = {
            "tokenizer": "clip_bpe",
            "context_length": int(model.context_length),
            "vocab_file": VOCAB_FILE,
            "vocab_size": int(model.vocab_size),
            "sot_token": SOT_TOKEN,
            "eot_token": EOT_TOKEN,
            "lower_case": True,
        }
    return meta


def example_tokens(context_length: int, batch: int = 2) -> torch.Tensor:
    tokens = torch.zeros(batch, context_length, dtype=torch.long)
    for i in range(batch):
        n = 3 + 4 * i
        tokens[i, 0] = SOT_TOKEN
        tokens[i, 1:n] = torch.arange(1, n) * 97 + i
        tokens[i, n] = EOT_TOKEN
    return tokens


def export(model: CLIP, with_text: bool, meta: dict, vocab_text: Optional[str], out: str,
           verify: bool = True) -> dict:
    """Scripts and saves the model; returns {"image": max_abs_diff, "text": ...} of the reload check."""
    wrapper = ImageTextEncoder(model) if with_text else ImageEncoder(model.visual)
    wrapper.eval()
    scripted = torch.jit.script(wrapper)
    extra = {"model.json": json.dumps(meta, indent=2, sort_keys=True)}
    if with_text:
        extra[VOCAB_FILE] = vocab_text
    tmp = out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.jit.save(scripted, tmp, _extra_files=extra)
    os.replace(tmp, out)
    if not verify:
        return {}
    # Reload what was written and compare it with the eager model.
    files = {"model.json": "", VOCAB_FILE: ""}
    loaded = torch.jit.load(out, map_location="cpu", _extra_files=files)
    if json.loads(files["model.json"]) != json.loads(extra["model.json"]):
        raise RuntimeError("model.json did not survive the round trip")
    if with_text and files[VOCAB_FILE].decode("utf-8") != vocab_text:
        raise RuntimeError(f"{VOCAB_FILE} did not survive the round trip")
    gen = torch.Generator().manual_seed(0)
    size = meta["image_size"]
    diffs = {}
    with torch.no_grad():
        x = torch.randn(2, 3, size, size, generator=gen)
        diffs["image"] = (loaded.encode_image(x) - _l2_normalize(model.encode_image(x))).abs().max().item()
        if with_text:
            t = example_tokens(meta["text"]["context_length"])
            diffs["text"] = (loaded.encode_text(t) - _l2_normalize(model.encode_text(t))).abs().max().item()
    for k, d in diffs.items():
        if not d < 1e-4:
            raise RuntimeError(f"exported encode_{k} differs from the eager model by {d}")
    return diffs


def _three_floats(s: str) -> List[float]:
    parts = [float(x) for x in re.split(r"[,\s]+", s.strip()) if x]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("expected three numbers, e.g. 0.5,0.5,0.5")
    return parts


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file, Hugging Face directory or hub id")
    p.add_argument("--out", required=True, help="output TorchScript archive (model.pt)")
    p.add_argument("--source", choices=("auto", "openai", "open_clip", "hf"), default="auto",
                   help="checkpoint kind (auto: directory = hf, vision_model.* keys = hf, else openai)")
    p.add_argument("--vocab", help=f"CLIP BPE merges ({VOCAB_DEFAULT_NAME}, gz or plain); default: "
                   "that file next to the checkpoint")
    p.add_argument("--no-text", action="store_true", help="export the image tower only")
    p.add_argument("--name", help="model name for model.json (default: the checkpoint's file name)")
    p.add_argument("--version", help="model version (default: sha256 prefix of the weight files)")
    p.add_argument("--act", choices=ACTIVATIONS, help="MLP activation (default: quick_gelu, or the HF config's)")
    p.add_argument("--vision-heads", type=int, help="vision attention heads (default: width/64, or HF config)")
    p.add_argument("--text-heads", type=int, help="text attention heads (default: width/64, or HF config)")
    p.add_argument("--mean", type=_three_floats, help="normalisation mean (default: CLIP's)")
    p.add_argument("--std", type=_three_floats, help="normalisation std (default: CLIP's)")
    p.add_argument("--interpolation", choices=("bicubic", "bilinear", "nearest"),
                   help="resize interpolation (default: bicubic, or the HF preprocessor's)")
    p.add_argument("--no-verify", action="store_true", help="skip reloading and checking the archive")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        src = load_source(args.checkpoint, args.source, args.act)
        model = build_model(src, args.vision_heads, args.text_heads)
        with_text = model.with_text and not args.no_text
        vocab_text = None
        if with_text:
            if model.vocab_size != CLIP_VOCAB_SIZE:
                raise ExportError(f"text tower has vocab size {model.vocab_size}, not CLIP BPE's "
                                  f"{CLIP_VOCAB_SIZE}; pass --no-text to export the image tower only")
            vocab = args.vocab or find_vocab(args.checkpoint)
            if vocab is None:
                raise ExportError(f"the checkpoint has a text tower: pass --vocab path/to/{VOCAB_DEFAULT_NAME} "
                                  "(openai/CLIP clip/ or open_clip ship it), or --no-text")
            vocab_text = read_vocab(vocab)
        preprocess = src.preprocess or {"image_size": model.image_resolution, "interpolation": "bicubic",
                                        "mean": CLIP_MEAN, "std": CLIP_STD}
        if preprocess["image_size"] != model.image_resolution:
            raise ExportError(f"preprocessor crops to {preprocess['image_size']} but the model takes "
                              f"{model.image_resolution}")
        for key in ("mean", "std", "interpolation"):
            if getattr(args, key) is not None:
                preprocess[key] = getattr(args, key)
        sha = _sha256_files(src.files)
        base = os.path.basename(os.path.normpath(args.checkpoint))
        name = args.name or os.path.splitext(base)[0]
        version = args.version or "sha256:" + sha[:16]
        source = {"kind": src.kind, "checkpoint": base, "sha256": sha}
        meta = make_model_json(model, with_text, name, version, preprocess, source)
        diffs = export(model, with_text, meta, vocab_text, args.out, verify=not args.no_verify)
    except ExportError as e:
        print(f"export_clip: error: {e}", file=sys.stderr)
        return 2
    checks = ", ".join(f"encode_{k} max |diff| {d:.2e}" for k, d in diffs.items())
    print(f"export_clip: wrote {args.out}: {meta['name']} ({src.kind}), embed_dim {meta['embed_dim']}, "
          f"image_size {meta['image_size']}, text {'yes' if with_text else 'no'}"
          + (f"; reload check vs eager: {checks}" if checks else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
