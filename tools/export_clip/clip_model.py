# CLIP architecture in plain PyTorch, for exporting to TorchScript.
#
# Adapted from openai/CLIP clip/model.py (MIT License, Copyright (c) 2021 OpenAI),
# https://github.com/openai/CLIP. Parameter names and shapes are OpenAI's, so an
# OpenAI or open_clip state dict loads with load_state_dict(strict=True).
#
# Differences from the original, all numerically equivalent in float32:
# - Attention is written with plain ops (linear, matmul, softmax) instead of
#   nn.MultiheadAttention / F.multi_head_attention_forward. With torch >= 2.0
#   those script to aten::scaled_dot_product_attention, which LibTorch 1.13 (the
#   runtime of our C++ service) does not have. The parameters keep MHA's names
#   (attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.*).
# - Activations are laid out batch-first (N, L, C) instead of (L, N, C).
# - LayerNorm is plain nn.LayerNorm (the fp16 cast-around wrapper cannot be
#   scripted, and we export float32 only).
# - The MLP width, head count, activation and LayerNorm eps are parameters
#   (open_clip and Hugging Face models vary them); defaults are OpenAI's.
# - The causal text mask is a non-persistent buffer, so it is not part of the
#   state dict (as in open_clip).

from collections import OrderedDict
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(act: str) -> nn.Module:
    if act == "quick_gelu":
        return QuickGELU()
    if act == "gelu":
        return nn.GELU()
    if act == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
               attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Scaled dot-product attention. q: [N, Lq, C], k and v: [N, L, C] -> [N, Lq, C]."""
    n, lq, c = q.shape
    lk = k.shape[1]
    head_dim = c // heads
    q = q.reshape(n, lq, heads, head_dim).permute(0, 2, 1, 3)
    k = k.reshape(n, lk, heads, head_dim).permute(0, 2, 1, 3)
    v = v.reshape(n, lk, heads, head_dim).permute(0, 2, 1, 3)
    scores = torch.matmul(q * (float(head_dim) ** -0.5), k.transpose(-2, -1))
    if attn_mask is not None:
        scores = scores + attn_mask
    weights = torch.softmax(scores, dim=-1)
    out = torch.matmul(weights, v)  # [N, H, Lq, D]
    return out.permute(0, 2, 1, 3).reshape(n, lq, c)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        # all conv layers have stride 1. an avgpool is performed after the second convolution when stride > 1
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        self.stride = stride
        if stride > 1 or inplanes != planes * Bottleneck.expansion:
            # downsampling layer is prepended with an avgpool, and the subsequent convolution has stride 1
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu3(out)


class AttentionPool2d(nn.Module):
    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: Optional[int] = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(start_dim=2).permute(0, 2, 1)  # NCHW -> N(HW)C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # N(HW+1)C
        x = x + self.positional_embedding.unsqueeze(0).to(x.dtype)
        out = _attention(self.q_proj(x[:, :1]), self.k_proj(x), self.v_proj(x), self.num_heads, None)
        return self.c_proj(out).squeeze(1)


class ModifiedResNet(nn.Module):
    """
    A ResNet class that is similar to torchvision's but contains the following changes:
    - There are now 3 "stem" convolutions as opposed to 1, with an average pool instead of a max pool.
    - Performs anti-aliasing strided convolutions, where an avgpool is prepended to convolutions with stride > 1
    - The final pooling layer is a QKV attention instead of an average pool
    """

    def __init__(self, layers: Tuple[int, int, int, int], output_dim: int, heads: int,
                 input_resolution: int = 224, width: int = 64):
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = input_resolution

        # the 3-layer stem
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        # residual layers
        self._inplanes = width  # this is a *mutable* variable used during construction
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)

        embed_dim = width * 32  # the ResNet feature dimension
        self.attnpool = AttentionPool2d(input_resolution // 32, embed_dim, heads, output_dim)

    def _make_layer(self, planes, blocks, stride=1):
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            layers.append(Bottleneck(self._inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.attnpool(x)


class MultiheadSelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters, written with plain ops (see the file comment)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.heads = heads
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(_attention(q, k, v, self.heads, attn_mask))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, mlp_width: Optional[int] = None,
                 act: str = "quick_gelu", eps: float = 1e-5):
        super().__init__()
        mlp_width = mlp_width or d_model * 4
        self.attn = MultiheadSelfAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, mlp_width)),
            ("gelu", make_activation(act)),
            ("c_proj", nn.Linear(mlp_width, d_model)),
        ]))
        self.ln_2 = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: Optional[int] = None,
                 act: str = "quick_gelu", eps: float = 1e-5):
        super().__init__()
        self.width = width
        self.layers = layers
        # A ModuleList (OpenAI: nn.Sequential; same state dict keys) so blocks can take the mask.
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_width, act, eps) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, mlp_width: Optional[int] = None, act: str = "quick_gelu",
                 eps: float = 1e-5):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=width, kernel_size=patch_size,
                               stride=patch_size, bias=False)

        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=eps)

        self.transformer = Transformer(width, layers, heads, mlp_width, act, eps)

        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # shape = [*, width, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # shape = [*, grid ** 2, width]
        cls = self.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, x.shape[2])
        x = torch.cat([cls, x], dim=1)  # shape = [*, grid ** 2 + 1, width]
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x, None)
        x = self.ln_post(x[:, 0, :])
        return x @ self.proj


class CLIP(nn.Module):
    def __init__(self,
                 embed_dim: int,
                 # vision
                 image_resolution: int,
                 vision_layers: Union[Tuple[int, int, int, int], int],
                 vision_width: int,
                 vision_patch_size: Optional[int],
                 # text
                 context_length: int,
                 vocab_size: int,
                 transformer_width: int,
                 transformer_heads: int,
                 transformer_layers: int,
                 # generalisations (defaults are OpenAI's)
                 vision_heads: Optional[int] = None,
                 vision_mlp_width: Optional[int] = None,
                 text_mlp_width: Optional[int] = None,
                 act: str = "quick_gelu",
                 eps: float = 1e-5,
                 with_text: bool = True):
        super().__init__()
        self.embed_dim = embed_dim
        self.image_resolution = image_resolution
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.with_text = with_text

        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(
                layers=tuple(vision_layers),
                output_dim=embed_dim,
                heads=vision_heads or vision_width * 32 // 64,
                input_resolution=image_resolution,
                width=vision_width,
            )
        else:
            self.visual = VisionTransformer(
                input_resolution=image_resolution,
                patch_size=vision_patch_size,
                width=vision_width,
                layers=vision_layers,
                heads=vision_heads or vision_width // 64,
                output_dim=embed_dim,
                mlp_width=vision_mlp_width,
                act=act,
                eps=eps,
            )

        if with_text:
            self.transformer = Transformer(
                width=transformer_width,
                layers=transformer_layers,
                heads=transformer_heads,
                mlp_width=text_mlp_width,
                act=act,
                eps=eps,
            )
            self.token_embedding = nn.Embedding(vocab_size, transformer_width)
            self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
            self.ln_final = nn.LayerNorm(transformer_width, eps=eps)
            self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
            self.register_buffer("attn_mask", self.build_attention_mask(), persistent=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * 4.6052)  # log(1 / 0.07)
        self.initialize_parameters()

    def initialize_parameters(self):
        if isinstance(self.visual, ModifiedResNet):
            if self.visual.attnpool is not None:
                std = self.visual.attnpool.c_proj.in_features ** -0.5
                nn.init.normal_(self.visual.attnpool.q_proj.weight, std=std)
                nn.init.normal_(self.visual.attnpool.k_proj.weight, std=std)
                nn.init.normal_(self.visual.attnpool.v_proj.weight, std=std)
                nn.init.normal_(self.visual.attnpool.c_proj.weight, std=std)
            for resnet_block in [self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4]:
                for name, param in resnet_block.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)
        if not self.with_text:
            return
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = (self.transformer.width ** -0.5) * ((2 * self.transformer.layers) ** -0.5)
        attn_std = self.transformer.width ** -0.5
        fc_std = (2 * self.transformer.width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    def build_attention_mask(self) -> torch.Tensor:
        # causal attention mask, additive: -inf above the diagonal
        mask = torch.empty(self.context_length, self.context_length)
        mask.fill_(float("-inf"))
        mask.triu_(1)  # zero out the lower diagonal
        return mask

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text)  # [batch_size, n_ctx, d_model]
        x = x + self.positional_embedding
        x = self.transformer(x, self.attn_mask)
        x = self.ln_final(x)
        # take features from the eot embedding (eot_token is the highest number in each sequence)
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection
        return x


def _count_layers(state_dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def config_from_state_dict(state_dict: dict) -> dict:
    """CLIP(**config) arguments inferred from an OpenAI-layout state dict (as openai/CLIP build_model does).

    Head counts follow OpenAI's convention (width // 64); override them when a checkpoint differs.
    """
    sd = state_dict
    vit = "visual.proj" in sd
    if vit:
        vision_width = sd["visual.conv1.weight"].shape[0]
        vision_layers = _count_layers(sd, "visual.transformer.resblocks.")
        vision_patch_size = sd["visual.conv1.weight"].shape[-1]
        grid_size = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        image_resolution = vision_patch_size * grid_size
        embed_dim = sd["visual.proj"].shape[1]
        vision_mlp_width = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    elif "visual.layer1.0.conv1.weight" in sd:
        vision_layers = tuple(_count_layers(sd, f"visual.layer{b}.") for b in (1, 2, 3, 4))
        vision_width = sd["visual.layer1.0.conv1.weight"].shape[0]
        output_width = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_patch_size = None
        image_resolution = output_width * 32
        embed_dim = sd["visual.attnpool.c_proj.weight"].shape[0]
        vision_mlp_width = None
    else:
        raise ValueError("state dict has neither visual.proj (ViT) nor visual.layer1.* (ModifiedResNet): "
                         "not an OpenAI/open_clip CLIP layout")
    with_text = "token_embedding.weight" in sd
    config = dict(embed_dim=embed_dim, image_resolution=image_resolution, vision_layers=vision_layers,
                  vision_width=vision_width, vision_patch_size=vision_patch_size,
                  vision_mlp_width=vision_mlp_width, with_text=with_text,
                  context_length=0, vocab_size=0, transformer_width=0, transformer_heads=1,
                  transformer_layers=0)
    if with_text:
        text_dim = sd["text_projection"].shape[1]
        if text_dim != embed_dim:
            raise ValueError(f"text_projection gives embed dim {text_dim}, the image tower {embed_dim}")
        transformer_width = sd["ln_final.weight"].shape[0]
        config.update(
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            transformer_width=transformer_width,
            transformer_heads=max(1, transformer_width // 64),
            transformer_layers=_count_layers(sd, "transformer.resblocks."),
            text_mlp_width=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    return config
