"""What a table's vectors are, and which vectors may share a table: the model-compatibility
policy. The store records and compares these specs but never makes one from settings: that
is the models' part (models.precision.planned_spec), so the store imports no model code."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass(frozen=True)
class VectorSpec:
    """What a table's vectors are: which model made them, their size, their storage
    (`vector`: float32; `halfvec`: float16, half the space), and the backend and precision
    that ran the model.

    Vectors of one model from one backend in float precisions (fp32, bf16, fp16) are the same
    vectors to a cosine of 0.99 or better, so they share a table: a library indexed in bf16
    on a GPU is searched in fp32 on a laptop. int8 is an approximation whose error depends on
    the model (issue 14 asks only for a mean cosine of 0.98) and, quantised per batch, on the
    batch; another backend is another implementation of the model: either is other vectors."""

    model_name: str
    dimension: int
    kind: str = "vector"
    backend: str = "torch"
    precision: str = "fp32"
    """fp32, bf16, fp16 or int8 (models.precision.decide resolves the settings' `auto`)."""
    device: str = field(default="cpu", compare=False)
    """The device setting the precision `auto` is resolved for."""

    @property
    def precision_class(self) -> str:
        """Precisions whose vectors can share a table: int8, or the float ones."""
        return "int8" if self.precision == "int8" else "float"

    def same_vectors(self, other: VectorSpec) -> bool:
        return (
            self.model_name == other.model_name
            and self.dimension == other.dimension
            and self.kind == other.kind
            and self.backend == other.backend
            and self.precision_class == other.precision_class
        )

    def describe(self) -> str:
        storage = "" if self.kind == "vector" else f" stored as {self.kind}"
        made = self.backend if self.precision == "auto" else f"{self.backend} {self.precision}"
        return f"{self.dimension}-d vectors of model '{self.model_name}'{storage} made by {made}"

    def refuse_other(self, wanted: VectorSpec, table: str) -> None:
        """A ConfigError naming both ways out, unless `wanted` are these same vectors."""
        if self.same_vectors(wanted):
            return
        raise ConfigError(
            f"table '{table}' holds {self.describe()}, but the settings ask for "
            f"{wanted.describe()}. To use this table, give its settings: {self.as_flags()} "
            "(or put them in config.json). To keep both, use another table (--table-name NEW); "
            "to re-embed this one with the new settings, run image-search index --reindex"
        )

    def as_flags(self) -> str:
        """The command-line flags that ask for these vectors."""
        flags = f"--model-name {shlex.quote(self.model_name)} --dimension {self.dimension}"
        if self.kind != "vector":
            flags += f" --vector-type {self.kind}"
        flags += f" --backend {self.backend}"
        return flags + " --precision int8" if self.precision == "int8" else flags
