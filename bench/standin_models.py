"""Random-weight stand-ins of the models README's model guide recommends, in Immich's layout.

    uv run python bench/standin_models.py [--only NAME ...] [--list]

Needs the development environment (torch and transformers build and export them; the model hub
is never asked). Each stand-in is a folder under bench/_data/standins/NAME laid out as Immich
publishes `immich-app/NAME` on the hub (machine-learning/immich_ml/models/clip/ in
immich-app/immich reads it):

    config.json                    open_clip's model config: embed_dim, vision_cfg, text_cfg
    visual/model.onnx              input `image` (1, 3, size, size) float32, output `embedding`
    visual/preprocess_cfg.json     size, mean, std, interpolation, resize_mode
    textual/model.onnx             input `text` (1, context_length) int32, output `embedding`;
                                   M-CLIP: `input_ids` + `attention_mask` int32
    textual/tokenizer.json         for the `tokenizers` library
    textual/tokenizer_config.json  its pad_token

Like Immich's exports the graphs take one image (or one text) at a time and return l2-normalised
embeddings. The image towers have the real models' architecture and size (width, depth, heads,
patch, input size, pooling): an image costs what the real model's would. The text towers have
the real depth and width, but a byte-level vocabulary of 260 tokens instead of the real 49 k to
256 k (an embedding lookup costs the same at any size; the files are smaller): a query costs
about what the real one would, the download does not. What the stand-ins cannot tell is the
real model's quality: README cites the published figures for that.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import DATA

STANDINS = DATA / "standins"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
CONTEXT = 77
OPSET = 17


@dataclass(frozen=True)
class Vision:
    """An image tower: `kind` clip (class token, projection) or siglip (attention pooling)."""

    kind: str
    image_size: int
    patch: int
    width: int
    layers: int
    heads: int
    mlp: int
    resize_mode: str  # open_clip's: shortest (resize, centre crop) or squash
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class Text:
    """A text tower: `kind` clip, siglip, xlm-roberta (open_clip's HF tower, mean pooling and
    an MLP projection), nllb (an M2M100 encoder, first-token pooling, linear projection) or
    mclip (XLM-RoBERTa, masked mean pooling, linear projection; two inputs)."""

    kind: str
    width: int
    layers: int
    heads: int
    mlp: int
    context: int = CONTEXT


@dataclass(frozen=True)
class StandIn:
    name: str  # immich-app/NAME on the hub
    embed_dim: int
    vision: Vision
    text: Text
    note: str


VIT_B_32 = Vision("clip", 224, 32, 768, 12, 12, 3072, "shortest", OPENAI_MEAN, OPENAI_STD)
SIGLIP_B_16 = Vision("siglip", 224, 16, 768, 12, 12, 3072, "squash", SIGLIP_MEAN, SIGLIP_STD)
SIGLIP_B_16_384 = Vision("siglip", 384, 16, 768, 12, 12, 3072, "squash", SIGLIP_MEAN, SIGLIP_STD)
VIT_B_16_PLUS_240 = Vision("clip", 240, 16, 896, 12, 14, 3584, "shortest", OPENAI_MEAN, OPENAI_STD)

STANDIN_LIST = [
    StandIn(
        "ViT-B-32__openai",
        512,
        VIT_B_32,
        Text("clip", 512, 12, 8, 2048),
        "also ViT-B-32__laion2b-s34b-b79k: the same architecture",
    ),
    StandIn(
        "ViT-B-16-SigLIP2__webli",
        768,
        SIGLIP_B_16,
        Text("siglip", 768, 12, 12, 3072, context=64),
        "SigLIP 2's ViT-B/16 at 224 px, attention-pooling head",
    ),
    StandIn(
        "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k",
        512,
        VIT_B_32,
        Text("xlm-roberta", 768, 12, 12, 3072),
        "multilingual: XLM-RoBERTa base text tower, ViT-B/32 image tower",
    ),
    StandIn(
        "nllb-clip-base-siglip__v1",
        768,
        SIGLIP_B_16_384,
        Text("nllb", 1024, 12, 16, 4096),
        "multilingual: NLLB-200-distilled-600M's encoder, SigLIP ViT-B/16 at 384 px",
    ),
    StandIn(
        "XLM-Roberta-Large-Vit-B-16Plus",
        640,
        VIT_B_16_PLUS_240,
        Text("mclip", 1024, 24, 16, 4096),
        "M-CLIP, multilingual: XLM-RoBERTa large text tower, open_clip's ViT-B-16-plus-240",
    ),
]
STANDINS_BY_NAME = {standin.name: standin for standin in STANDIN_LIST}


def standin_folder(name: str) -> Path:
    """The stand-in `name` in Immich's layout, built once under bench/_data/standins."""
    folder = STANDINS / name
    if not (folder / "textual" / "model.onnx").is_file():
        build(STANDINS_BY_NAME[name], folder)
    return folder


def build(standin: StandIn, folder: Path) -> Path:
    import torch
    from tiny_models import build_jina_tokenizer

    (folder / "visual").mkdir(parents=True, exist_ok=True)
    (folder / "textual").mkdir(parents=True, exist_ok=True)
    vocab = build_jina_tokenizer(folder / "textual" / "tokenizer.json")
    torch.manual_seed(0)
    vision = standin.vision
    _export(
        _image_tower(vision, standin.embed_dim),
        (torch.randn(1, 3, vision.image_size, vision.image_size),),
        ["image"],
        folder / "visual" / "model.onnx",
    )
    text = standin.text
    ids = torch.full((1, text.context), vocab["<pad>"], dtype=torch.int32)
    ids[0, :4] = torch.tensor([vocab["<s>"], 5, 6, vocab["</s>"]])
    inputs = ["input_ids", "attention_mask"] if text.kind == "mclip" else ["text"]
    args = (ids, (ids != vocab["<pad>"]).int()) if text.kind == "mclip" else (ids,)
    tower = _text_tower(text, standin.embed_dim, len(vocab), vocab["<pad>"], vocab["</s>"])
    _export(tower, args, inputs, folder / "textual" / "model.onnx")
    _write_json(folder / "config.json", _open_clip_config(standin))
    _write_json(
        folder / "visual" / "preprocess_cfg.json",
        {
            "size": [vision.image_size, vision.image_size],
            "mode": "RGB",
            "mean": vision.mean,
            "std": vision.std,
            "interpolation": "bicubic",
            "resize_mode": vision.resize_mode,
            "fill_color": 0,
        },
    )
    _write_json(
        folder / "textual" / "tokenizer_config.json",
        {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "model_max_length": 77},
    )
    return folder


def _open_clip_config(standin: StandIn) -> dict[str, Any]:
    vision, text = standin.vision, standin.text
    return {
        "embed_dim": standin.embed_dim,
        "vision_cfg": {
            "image_size": vision.image_size,
            "patch_size": vision.patch,
            "width": vision.width,
            "layers": vision.layers,
        },
        "text_cfg": {
            "context_length": text.context,
            "width": text.width,
            "layers": text.layers,
            "heads": text.heads,
        },
        "standin": {"of": f"immich-app/{standin.name}", "note": standin.note},
    }


def _image_tower(vision: Vision, embed_dim: int) -> Any:
    import torch
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    shape = {
        "hidden_size": vision.width,
        "intermediate_size": vision.mlp,
        "num_hidden_layers": vision.layers,
        "num_attention_heads": vision.heads,
        "image_size": vision.image_size,
        "patch_size": vision.patch,
    }
    if vision.kind == "clip":
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**shape, projection_dim=embed_dim))

        def embed(image: torch.Tensor) -> torch.Tensor:
            return model(pixel_values=image).image_embeds
    else:
        model = SiglipVisionModel(SiglipVisionConfig(**shape))

        def embed(image: torch.Tensor) -> torch.Tensor:
            return model(pixel_values=image).pooler_output

    return _normalised(model.eval(), embed)


def _text_tower(text: Text, embed_dim: int, vocab_size: int, pad: int, eos: int) -> Any:
    import torch

    builders: dict[str, Callable[..., tuple[Any, Callable]]] = {
        "clip": _clip_text,
        "siglip": _siglip_text,
        "xlm-roberta": _xlm_roberta_text,
        "mclip": _xlm_roberta_text,
        "nllb": _nllb_text,
    }
    model, embed = builders[text.kind](text, embed_dim, vocab_size, pad, eos)
    if text.kind == "mclip":
        return _normalised(model.eval(), embed)

    def from_ids(ids: torch.Tensor) -> torch.Tensor:  # open_clip's towers mask the padding
        return embed(ids, (ids != pad).long())

    return _normalised(model.eval(), from_ids)


def _clip_text(text: Text, embed_dim: int, vocab_size: int, pad: int, eos: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=text.width,
        intermediate_size=text.mlp,
        num_hidden_layers=text.layers,
        num_attention_heads=text.heads,
        max_position_embeddings=text.context,
        projection_dim=embed_dim,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    model = CLIPTextModelWithProjection(config)
    return model, lambda ids, mask: model(input_ids=ids, attention_mask=mask).text_embeds


def _siglip_text(text: Text, embed_dim: int, vocab_size: int, pad: int, eos: int) -> Any:
    from transformers import SiglipTextConfig, SiglipTextModel

    config = SiglipTextConfig(
        vocab_size=vocab_size,
        hidden_size=text.width,
        intermediate_size=text.mlp,
        num_hidden_layers=text.layers,
        num_attention_heads=text.heads,
        max_position_embeddings=text.context,
        projection_size=embed_dim,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    model = SiglipTextModel(config)
    return model, lambda ids, mask: model(input_ids=ids).pooler_output  # full length, no mask


def _xlm_roberta_text(text: Text, embed_dim: int, vocab_size: int, pad: int, eos: int) -> Any:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=text.width,
        intermediate_size=text.mlp,
        num_hidden_layers=text.layers,
        num_attention_heads=text.heads,
        max_position_embeddings=text.context + 2 + pad,
        pad_token_id=pad,
    )
    encoder = XLMRobertaModel(config, add_pooling_layer=False)
    if text.kind == "mclip":  # M-CLIP: one linear layer
        projection = torch.nn.Linear(text.width, embed_dim)
    else:  # open_clip's `mlp` projection
        middle = (text.width + embed_dim) // 2
        projection = torch.nn.Sequential(
            torch.nn.Linear(text.width, middle, bias=False),
            torch.nn.GELU(),
            torch.nn.Linear(middle, embed_dim, bias=False),
        )
    model = torch.nn.ModuleDict({"encoder": encoder, "projection": projection})

    def embed(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        return projection((states * weights).sum(1) / weights.sum(1))

    return model, embed


def _nllb_text(text: Text, embed_dim: int, vocab_size: int, pad: int, eos: int) -> Any:
    import torch
    from transformers import M2M100Config
    from transformers.models.m2m_100.modeling_m2m_100 import M2M100Encoder

    config = M2M100Config(
        vocab_size=vocab_size,
        d_model=text.width,
        encoder_layers=text.layers,
        encoder_attention_heads=text.heads,
        encoder_ffn_dim=text.mlp,
        max_position_embeddings=text.context + 2 + pad,
        pad_token_id=pad,
        scale_embedding=True,
    )
    encoder = M2M100Encoder(config)
    projection = torch.nn.Linear(text.width, embed_dim, bias=False)
    model = torch.nn.ModuleDict({"encoder": encoder, "projection": projection})

    def embed(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return projection(states[:, 0])

    return model, embed


def _normalised(model: Any, embed: Callable) -> Any:
    """A tower as a torch module whose output is the l2-normalised embedding (as Immich's)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(embed(*inputs), dim=-1)

    return Tower().eval()


def _export(module: Any, args: tuple, inputs: list[str], path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=["embedding"],
            opset_version=OPSET,
            dynamo=False,
        )


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(STANDINS_BY_NAME), default=None)
    parser.add_argument("--list", action="store_true", help="name the stand-ins and stop")
    args = parser.parse_args()
    for standin in STANDIN_LIST:
        if args.list:
            print(f"{standin.name:48} {standin.note}")
        elif args.only is None or standin.name in args.only:
            print(standin_folder(standin.name))


if __name__ == "__main__":
    main()
