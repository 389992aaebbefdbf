"""A model's input made from uint8 CHW tensors on their device (the GPU path of
tensor_images.py): the recipe of its preprocessor_config.json applied with torch, as the onnx
backend applies it with Pillow; and tensors back to Pillow images for adapters that take
only those. torch is imported inside the functions: it is there whenever tensors are."""

from __future__ import annotations

from typing import Any

from PIL import Image

from .onnx_runtime import PixelRecipe, shortest_edge_size


def to_pil(pixels: Any) -> Image.Image:
    """For adapters that only take Pillow images (the round trip the GPU path avoids)."""
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy(), mode="RGB")


# PIL resampling filters as torch interpolation modes (Lanczos has no torch equivalent:
# bicubic with antialiasing is the nearest).
TORCH_MODES = {
    Image.Resampling.NEAREST: "nearest",
    Image.Resampling.BILINEAR: "bilinear",
    Image.Resampling.BICUBIC: "bicubic",
    Image.Resampling.LANCZOS: "bicubic",
}


def model_pixels(images: list[Any], recipe: PixelRecipe) -> Any:
    """The model's input from uint8 CHW tensors, on their device: resized, centre-cropped,
    scaled and normalised as its preprocessor_config.json says (the recipe the onnx backend
    applies with Pillow). A float32 batch (n, 3, height, width)."""
    import torch

    batch = torch.stack([_model_sized(image, recipe) for image in images])
    mean = torch.tensor(recipe.mean, device=batch.device).reshape(1, 3, 1, 1)
    std = torch.tensor(recipe.std, device=batch.device).reshape(1, 3, 1, 1)
    return (batch * recipe.scale - mean) / std


def _model_sized(image: Any, recipe: PixelRecipe) -> Any:
    """One image as float32 at the model's size (not yet normalised)."""
    import torch

    pixels = image.float()
    height, width = pixels.shape[1:]
    if recipe.shortest_edge is not None:
        new_width, new_height = shortest_edge_size((width, height), recipe.shortest_edge)
    elif recipe.size is not None:
        new_height, new_width = recipe.size
    else:
        new_height, new_width = height, width
    if (new_height, new_width) != (height, width):
        mode = TORCH_MODES.get(Image.Resampling(recipe.resample), "bicubic")
        smooth = {"antialias": True, "align_corners": False} if mode != "nearest" else {}
        pixels = (
            torch.nn.functional.interpolate(
                pixels[None], size=(new_height, new_width), mode=mode, **smooth
            )[0]
            .clamp(0, 255)
            .round()
        )
    if recipe.crop is not None:
        pixels = _centre(pixels, *recipe.crop, round_offset=recipe.round_crop)
    return pixels


def _centre(pixels: Any, height: int, width: int, round_offset: bool) -> Any:
    """The centre (height, width) of a CHW tensor, padded with black where it is smaller, as
    Pillow's crop is."""
    import torch

    rows, columns = pixels.shape[1:]
    if round_offset:
        top, left = int(round((rows - height) / 2.0)), int(round((columns - width) / 2.0))
    else:
        top, left = (rows - height) // 2, (columns - width) // 2
    out = torch.zeros((pixels.shape[0], height, width), dtype=pixels.dtype, device=pixels.device)
    source_top, source_left = max(top, 0), max(left, 0)
    source = pixels[:, source_top : top + height, source_left : left + width]
    out[
        :,
        source_top - top : source_top - top + source.shape[1],
        source_left - left : source_left - left + source.shape[2],
    ] = source
    return out
