"""image-search: find the images in your folder most like a given image or text."""

__version__ = "0.1.0"
