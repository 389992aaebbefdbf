"""Tiny random CLIP models built offline (no model hub is reachable in tests or CI)."""

from __future__ import annotations

import json
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
        return features.numpy()

    def encode_text(self, sentences, task=None, batch_size=32, **kwargs):
        _, tokenizer = self._processors()
        prefix = "Represent the query for retrieving evidence documents: "
        texts = [prefix + s if task == "retrieval.query" else s for s in sentences]
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=77,
                           return_tensors="pt")
        with torch.inference_mode():
            features = self.get_text_features(**tokens)
        return features.numpy()
'''


def _byte_level_vocab() -> dict[str, int]:
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
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


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_models.py FOLDER  (writes a tiny random CLIP there)")
    print(build_tiny_clip(Path(sys.argv[1])))
