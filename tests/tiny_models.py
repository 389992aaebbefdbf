"""Tiny random CLIP models built offline (no model hub is reachable in tests or CI)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

EMBEDDING_DIM = 64
IMAGE_SIZE = 32

# A model that brings its own code, like jina-clip-v2: encode_image / encode_text.
REMOTE_CODE = '''
import numpy as np
import torch
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer


class TinyRemoteClip(CLIPModel):
    """CLIP with jina-clip-v2's encode_image / encode_text interface."""

    def _processors(self):
        if not hasattr(self, "_image_processor"):
            self._image_processor = CLIPImageProcessor.from_pretrained(self.config._name_or_path)
            self._tokenizer = CLIPTokenizer.from_pretrained(self.config._name_or_path)
        return self._image_processor, self._tokenizer

    def encode_image(self, images, batch_size=32, **kwargs):
        image_processor, _ = self._processors()
        pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            features = self.get_image_features(pixel_values=pixels)
        return features.float().numpy()

    def encode_text(self, sentences, task=None, batch_size=32, **kwargs):
        _, tokenizer = self._processors()
        prefix = "Represent the query for retrieving evidence documents: "
        texts = [prefix + s if task == "retrieval.query" else s for s in sentences]
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=77,
                           return_tensors="pt")
        with torch.inference_mode():
            features = self.get_text_features(**tokens)
        return features.float().numpy()
'''


def _byte_level_vocab() -> dict[str, int]:
    # The 256 byte-level symbols (transformers 5 no longer exports bytes_to_unicode).
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 CLIP with a character-level tokenizer, saved like a hub model."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _byte_level_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)

    common = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    config = CLIPConfig(
        text_config={
            **common,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": 1,
        },
        vision_config={**common, "image_size": IMAGE_SIZE, "patch_size": 8},
        projection_dim=EMBEDDING_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    return folder


def build_remote_code_model(folder: Path) -> Path:
    """The tiny CLIP plus an `auto_map` naming its own model class: the trust_remote_code path."""
    build_tiny_clip(folder, seed=1)
    (folder / "modeling_tiny.py").write_text(REMOTE_CODE, encoding="utf-8")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModel": "modeling_tiny.TinyRemoteClip"}
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


# The published-ONNX layout of jina-clip-v2 (its model card): one graph, two inputs, four outputs.
JINA_INPUTS = ["input_ids", "pixel_values"]
JINA_OUTPUTS = [
    "text_embeddings",
    "image_embeddings",
    "l2norm_text_embeddings",
    "l2norm_image_embeddings",
]
JINA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def build_jina_tokenizer(path: Path) -> dict[str, int]:
    """A byte-level tokenizer.json made with the `tokenizers` library: every byte a token,
    wrapped in <s> ... </s> as jina-clip-v2's XLM-RoBERTa tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(symbols + JINA_SPECIALS)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(JINA_SPECIALS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    tokenizer.save(str(path))
    return vocab


def build_jina_layout_model(folder: Path, seed: int = 2) -> Path:
    """A tiny random dual encoder published the way jina-clip-v2 is: config.json naming its own
    code (which does not exist here: the ONNX path must never need it), onnx/model.onnx with
    its weights in model.onnx_data, model_fp16.onnx and model_int8.onnx, a tokenizer.json and
    a preprocessor_config.json in jina-clip's own keys."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_jina_tokenizer(folder / "tokenizer.json")
    common = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    text = {
        **common,
        "vocab_size": len(vocab),
        "max_position_embeddings": 77,
        "bos_token_id": vocab["<s>"],
        "eos_token_id": vocab["</s>"],
        "pad_token_id": vocab["<pad>"],
    }
    vision = {**common, "image_size": IMAGE_SIZE, "patch_size": 8}
    torch.manual_seed(seed)
    clip = CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBEDDING_DIM)
    ).eval()
    return publish_in_jina_layout(clip, folder, IMAGE_SIZE)


def publish_in_jina_layout(
    clip, folder: Path, image_size: int, precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
) -> Path:
    """Write a CLIPModel's towers as one ONNX graph laid out as jina-clip-v2 publishes its own
    (see build_jina_layout_model), in `precisions`. The text tower reads the byte-level jina
    tokenizer's ids, so its vocabulary must hold them."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx_folder = folder / "onnx"
    onnx_folder.mkdir(parents=True, exist_ok=True)
    vocab = build_jina_tokenizer(folder / "tokenizer.json")
    pad = vocab["<pad>"]

    class DualEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor):
            mask = (input_ids != pad).long()  # the graph takes no mask: padding is its pad id
            text = _tensor(self.clip.get_text_features(input_ids=input_ids, attention_mask=mask))
            image = _tensor(self.clip.get_image_features(pixel_values=pixel_values))
            normalise = torch.nn.functional.normalize
            return text, image, normalise(text, dim=-1), normalise(image, dim=-1)

    axes = {"input_ids": {0: "texts", 1: "tokens"}, "pixel_values": {0: "images"}}
    axes.update({name: {0: "texts" if "text" in name else "images"} for name in JINA_OUTPUTS})
    exported = onnx_folder / "exported.onnx"
    start, end = vocab["<s>"], vocab["</s>"]
    sample_ids = torch.tensor([[start, 5, 6, end], [start, 7, end, pad]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            DualEncoder(),
            (sample_ids, torch.randn(2, 3, image_size, image_size)),
            str(exported),
            input_names=JINA_INPUTS,
            output_names=JINA_OUTPUTS,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    if "fp16" in precisions:
        onnx.save(
            convert_float_to_float16(onnx.load(str(exported)), keep_io_types=True),
            str(onnx_folder / "model_fp16.onnx"),
        )
    if "int8" in precisions:
        quantize_dynamic(
            exported,
            onnx_folder / "model_int8.onnx",
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    onnx.save(  # the weights beside the graph, as the real fp32 model.onnx has them
        onnx.load(str(exported)),
        str(onnx_folder / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx_data",
        size_threshold=0,
    )
    for leftover in onnx_folder.glob("exported.onnx*"):
        leftover.unlink()
    _write_json(
        folder / "config.json",
        {
            "model_type": "jina_clip",
            "auto_map": {
                "AutoConfig": "jinaai/jina-clip-implementation--configuration_clip.JinaCLIPConfig",
                "AutoModel": "jinaai/jina-clip-implementation--modeling_clip.JinaCLIPModel",
            },
            "projection_dim": int(clip.config.projection_dim),
        },
    )
    _write_json(
        folder / "preprocessor_config.json",
        {
            "image_processor_type": "JinaCLIPImageProcessor",
            "size": image_size,
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
            "resize_mode": "shortest",
            "interpolation": "bicubic",
            "fill_color": 0,
        },
    )
    _write_json(
        folder / "tokenizer_config.json",
        {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "model_max_length": 77},
    )
    return folder


def _tensor(output):
    """get_*_features: a tensor in transformers 4, an output with pooler_output in 5."""
    return output if hasattr(output, "shape") else output.pooler_output


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


if __name__ == "__main__":
    import importlib.util
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_models.py FOLDER  (writes a tiny random CLIP there)")
    if not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        sys.exit(
            "tests/tiny_models.py writes a Hugging Face CLIP folder, which needs torch and "
            "transformers (uv sync --extra torch). Without them, try examples/tiny-immich, or "
            "write a tiny model in Immich's layout: python tests/tiny_immich.py FOLDER"
        )
    print(build_tiny_clip(Path(sys.argv[1])))
