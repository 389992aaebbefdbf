"""Tiny random models in Immich's ONNX layout, written without torch: the graphs with
`onnx.helper` and numpy, the tokenizers with the `tokenizers` library. Only what the default
install has is needed, so that a user without torch (and the no-torch tests) can build one:

    python tests/tiny_immich.py FOLDER [--multilingual]

The layout (Immich's machine-learning service reads the same): config.json (open_clip's model
config), visual/model.onnx + visual/preprocess_cfg.json, textual/model.onnx +
textual/tokenizer.json + textual/tokenizer_config.json. The visual graph takes `image`
(float32, batch fixed at one as Immich's exports have it, or any batch); the textual graph
takes `text` (int32, padded to context_length) or, M-CLIP style, `input_ids` and
`attention_mask`. Random weights: rankings mean nothing, but an image always finds itself.

`publish_in_immich_layout` writes a transformers CLIPModel (torch) in the same layout, for
benchmarks that need a stand-in of a real architecture."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

EMBED_DIM = 64
IMAGE_SIZE = 32
PATCH = 8
CONTEXT_LENGTH = 77
OPSET = 17
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
CLIP_START, CLIP_END = "<|startoftext|>", "<|endoftext|>"
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-RoBERTa's first four ids
# The kanji of the multilingual tokenizer: a handful of common ones (enough for the tests'
# queries and names); every kana is in it.
KANJI = "猫犬写真旅行海山空花夜雪人子日本東京桜車家食鳥水月木川森雨赤青白黒駅町村"
JAPANESE_WORDS = ["写真", "旅行", "猫の", "犬の", "の写真", "東京", "日本"]
ENGLISH_WORDS = ["▁a", "▁the", "▁photo", "▁of", "▁cat", "▁dog", "▁red"]


# ---------------------------------------------------------------- the whole model


def build_immich_model(
    folder: Path,
    *,
    multilingual: bool = False,
    seed: int = 5,
    batch: int | None = 1,
    embed_dim: int = EMBED_DIM,
) -> Path:
    """A tiny random model in Immich's layout: open_clip style (`text` input, a CLIP-like
    byte-level tokenizer) or, `multilingual`, M-CLIP style (`input_ids` + `attention_mask`,
    an XLM-R-like Unigram tokenizer that covers kana and some kanji). `batch`: the graphs'
    batch size (1, as Immich exports them; None for any)."""
    visual, textual = folder / "visual", folder / "textual"
    visual.mkdir(parents=True, exist_ok=True)
    textual.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if multilingual:
        vocabulary, pad = build_xlmr_like_tokenizer(textual / "tokenizer.json")
        text_inputs = ["input_ids", "attention_mask"]
        tokenizer_config = {"pad_token": "<pad>", "model_max_length": 512}
    else:
        vocabulary, pad = build_clip_like_tokenizer(textual / "tokenizer.json")
        text_inputs = ["text"]
        tokenizer_config = {"pad_token": CLIP_END, "model_max_length": CONTEXT_LENGTH}
    write_json(textual / "tokenizer_config.json", tokenizer_config)
    save_graph(visual_graph(rng, embed_dim, batch), visual / "model.onnx")
    save_graph(
        textual_graph(rng, embed_dim, batch, vocabulary, pad, text_inputs),
        textual / "model.onnx",
    )
    write_json(visual / "preprocess_cfg.json", preprocess_config(IMAGE_SIZE))
    write_json(folder / "config.json", open_clip_config(embed_dim, IMAGE_SIZE, vocabulary))
    return folder


def open_clip_config(embed_dim: int, image_size: int, vocabulary: int) -> dict[str, Any]:
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 1, "width": 64, "patch_size": PATCH},
        "text_cfg": {
            "context_length": CONTEXT_LENGTH,
            "vocab_size": vocabulary,
            "width": 32,
            "heads": 1,
            "layers": 1,
        },
    }


def preprocess_config(image_size: int) -> dict[str, Any]:
    """open_clip's preprocess config, as Immich's exporter writes it."""
    return {
        "size": [image_size, image_size],
        "mode": "RGB",
        "mean": OPENAI_MEAN,
        "std": OPENAI_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }


# ---------------------------------------------------------------- graphs


def visual_graph(rng: np.random.Generator, embed_dim: int, batch: int | None) -> Any:
    """image (batch, 3, S, S) -> a patch convolution -> flatten -> two linear layers."""
    from onnx import TensorProto, helper

    channels, hidden = 8, 64
    features = channels * (IMAGE_SIZE // PATCH) ** 2
    weights = [
        initialiser("patch_w", rng, (channels, 3, PATCH, PATCH), 3 * PATCH * PATCH),
        initialiser("patch_b", rng, (channels,), 1),
        initialiser("w1", rng, (features, hidden), features),
        initialiser("b1", rng, (hidden,), 1),
        initialiser("w2", rng, (hidden, embed_dim), hidden),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["image", "patch_w", "patch_b"], ["patches"], strides=[PATCH, PATCH]
        ),
        helper.make_node("Flatten", ["patches"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Tanh", ["h1b"], ["h1t"]),
        helper.make_node("MatMul", ["h1t", "w2"], ["embedding"]),
    ]
    size = batch if batch is not None else "batch"
    image = helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, [size, 3, IMAGE_SIZE, IMAGE_SIZE]
    )
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [size, embed_dim])
    return helper.make_graph(nodes, "visual", [image], [out], weights)


def textual_graph(
    rng: np.random.Generator,
    embed_dim: int,
    batch: int | None,
    vocabulary: int,
    pad: int,
    inputs: list[str],
) -> Any:
    """ids -> token and position embeddings -> the mean over real tokens -> two linear layers.
    With `text` alone, real tokens are those that are not the pad id; with `input_ids`, the
    attention mask says."""
    from onnx import TensorProto, helper

    width = 32
    weights = [
        initialiser("tokens", rng, (vocabulary, width), 1),
        initialiser("positions", rng, (CONTEXT_LENGTH, width), 4),
        initialiser("w1", rng, (width, embed_dim), width),
        initialiser("w2", rng, (embed_dim, embed_dim), embed_dim),
        helper.make_tensor("sequence_axis", TensorProto.INT64, [1], [1]),
        helper.make_tensor("last_axis", TensorProto.INT64, [1], [2]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    ids = inputs[0]
    nodes = [
        helper.make_node("Gather", ["tokens", ids], ["embedded"]),
        helper.make_node("Add", ["embedded", "positions"], ["placed"]),
    ]
    if len(inputs) == 1:
        weights.append(helper.make_tensor("pad", TensorProto.INT32, [], [pad]))
        nodes += [
            helper.make_node("Equal", [ids, "pad"], ["is_pad"]),
            helper.make_node("Not", ["is_pad"], ["is_token"]),
            helper.make_node("Cast", ["is_token"], ["mask"], to=TensorProto.FLOAT),
        ]
    else:
        nodes.append(helper.make_node("Cast", [inputs[1]], ["mask"], to=TensorProto.FLOAT))
    nodes += [
        helper.make_node("Unsqueeze", ["mask", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["placed", "mask3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "sequence_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "sequence_axis"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["mean"]),
        helper.make_node("MatMul", ["mean", "w1"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["h1t"]),
        helper.make_node("MatMul", ["h1t", "w2"], ["embedding"]),
    ]
    size = batch if batch is not None else "batch"
    graph_inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT32, [size, CONTEXT_LENGTH])
        for name in inputs
    ]
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [size, embed_dim])
    return helper.make_graph(nodes, "textual", graph_inputs, [out], weights)


def initialiser(name: str, rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> Any:
    from onnx import numpy_helper

    values = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def save_graph(graph: Any, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every ONNX Runtime the project supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# ---------------------------------------------------------------- tokenizers


def build_clip_like_tokenizer(path: Path) -> tuple[int, int]:
    """A byte-level tokenizer.json (every byte a token) wrapped in CLIP's start and end
    tokens; padded with the end token, as Immich's CLIP tokenizers are. Returns the vocabulary
    size and the pad id."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocabulary = {token: i for i, token in enumerate([*symbols, CLIP_START, CLIP_END])}
    save_as_clip_does(Tokenizer(models.BPE(vocab=vocabulary, merges=[])), vocabulary, path)
    return len(vocabulary), vocabulary[CLIP_END]


def save_as_clip_does(tokenizer: Any, ids: dict[str, int], path: Path) -> None:
    """Byte-level BPE `tokenizer` with CLIP's start and end tokens around a text, saved."""
    from tokenizers import decoders, pre_tokenizers, processors

    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([CLIP_START, CLIP_END])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_START} $A {CLIP_END}",
        special_tokens=[(CLIP_START, ids[CLIP_START]), (CLIP_END, ids[CLIP_END])],
    )
    tokenizer.save(str(path))


def build_xlmr_like_tokenizer(path: Path) -> tuple[int, int]:
    """A SentencePiece-style Unigram tokenizer.json as XLM-RoBERTa's (M-CLIP's) is made:
    <s> <pad> </s> <unk> first, NFKC, `▁` for spaces, <s> ... </s> around a text. Its pieces
    are ASCII, every hiragana and katakana, the kanji in KANJI and a few whole words.
    Returns the vocabulary size and the pad id."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    characters = [chr(c) for c in range(0x21, 0x7F)]
    characters += [chr(c) for c in range(0x3041, 0x3097)]  # hiragana
    characters += [chr(c) for c in range(0x30A1, 0x30FB)]  # katakana
    characters += ["ー", "、", "。", "「", "」", *KANJI]
    pieces = [(token, 0.0) for token in XLMR_SPECIALS] + [("▁", -2.0)]
    pieces += [(word, -3.0) for word in ENGLISH_WORDS + JAPANESE_WORDS]
    pieces += [(character, -6.0) for character in characters]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=XLMR_SPECIALS.index("<unk>")))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.add_special_tokens(XLMR_SPECIALS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.save(str(path))
    return len(pieces), XLMR_SPECIALS.index("<pad>")


def build_bpe_tokenizer_of_size(
    path: Path, vocabulary: int, seed: int = 0, open_clip_vocab: Path | None = None
) -> tuple[int, int]:
    """A CLIP-style byte-level BPE tokenizer.json with `vocabulary` tokens and as many merges
    as a real one of that size (CLIP's: 49,408), made up at random: a stand-in that costs what
    a real tokenizer costs to load and run. `open_clip_vocab`: where to write the same merges
    as open_clip's bpe_simple_vocab_16e6.txt.gz (which rclip reads). Returns the vocabulary
    size and the pad id."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    rng = np.random.default_rng(seed)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*symbols, *(s + "</w>" for s in symbols)]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    while len(tokens) < vocabulary - 2:
        # Mostly short parts, as a trained vocabulary's merges are.
        left, right = (tokens[int(len(tokens) * rng.random() ** 4)] for _ in range(2))
        if left.endswith("</w>"):
            continue
        if left + right not in known:
            known.add(left + right)
            tokens.append(left + right)
            merges.append((left, right))
    tokens += [CLIP_START, CLIP_END]
    ids = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=merges, end_of_word_suffix="</w>"))
    save_as_clip_does(tokenizer, ids, path)
    if open_clip_vocab is not None:
        import gzip

        lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
        open_clip_vocab.parent.mkdir(parents=True, exist_ok=True)
        open_clip_vocab.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    return len(ids), ids[CLIP_END]


# ---------------------------------------------------------------- a real architecture (torch)


def publish_in_immich_layout(
    clip: Any, folder: Path, tokenizer_json: Path, pad_token: str, context_length: int = 77
) -> Path:
    """Write a transformers CLIPModel in Immich's layout: its towers exported as Immich's
    exporter does (inputs `image` and `text`, batch one, the output `embedding`), its
    preprocessing as open_clip's config, `tokenizer_json` as its tokenizer. Needs torch."""
    import shutil

    import torch

    visual, textual = folder / "visual", folder / "textual"
    visual.mkdir(parents=True, exist_ok=True)
    textual.mkdir(parents=True, exist_ok=True)
    image_size = int(clip.config.vision_config.image_size)

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

    class Visual(Tower):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return as_tensor(self.clip.get_image_features(pixel_values=image))

    class Textual(Tower):
        def forward(self, text: torch.Tensor) -> torch.Tensor:
            return as_tensor(self.clip.get_text_features(input_ids=text.long()))

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for module, sample, name, into in (
            (Visual(), torch.randn(1, 3, image_size, image_size), "image", visual),
            (Textual(), torch.ones(1, context_length, dtype=torch.int32), "text", textual),
        ):
            torch.onnx.export(
                module,
                (sample,),
                str(into / "model.onnx"),
                input_names=[name],
                output_names=["embedding"],
                opset_version=OPSET,
                dynamo=False,
            )
    shutil.copyfile(tokenizer_json, textual / "tokenizer.json")
    write_json(textual / "tokenizer_config.json", {"pad_token": pad_token})
    write_json(visual / "preprocess_cfg.json", preprocess_config(image_size))
    config = {
        "embed_dim": int(clip.config.projection_dim),
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": int(clip.config.vision_config.patch_size),
            "layers": int(clip.config.vision_config.num_hidden_layers),
            "width": int(clip.config.vision_config.hidden_size),
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": int(clip.config.text_config.vocab_size),
            "layers": int(clip.config.text_config.num_hidden_layers),
            "width": int(clip.config.text_config.hidden_size),
        },
    }
    write_json(folder / "config.json", config)
    return folder


def as_tensor(output: Any) -> Any:
    """get_*_features: a tensor in transformers 4, an output with pooler_output in 5."""
    return output if hasattr(output, "shape") else output.pooler_output


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    multilingual = "--multilingual" in arguments
    folders = [a for a in arguments if a != "--multilingual"]
    if len(folders) != 1:
        sys.exit("usage: python tests/tiny_immich.py FOLDER [--multilingual]")
    print(build_immich_model(Path(folders[0]), multilingual=multilingual))
