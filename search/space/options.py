"""The options that pick a space, defined once: name, resolution, width, classes, head width and candidates.

The service's run request (`SpaceRequest`), `dnas space`, `dnas profile`, `dnas validate` and `dnas demo`
all take a space through this model, so a bound (resolution 16..1024, width in (0, 4]) or a default is
written here and nowhere else. `build` turns it into the fully resolved `SearchSpace`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from search.space.macro import SearchSpace, get_space


class SpaceOptions(BaseModel):
    """A named space with its parameters (a full resolved space is what `dnas space show` prints)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="fbnet", max_length=64, description="Space name.")
    resolution: int = Field(default=224, ge=16, le=1024, description="Input resolution in pixels.")
    width: float = Field(default=1.0, gt=0, le=4, description="Channel width multiplier.")
    num_classes: int = Field(default=1000, ge=1, le=100_000, description="Number of output classes.")
    head_c: int | None = Field(default=None, ge=8, le=8192, description="Head channels (default: the space's).")
    candidates: list[str] | None = Field(
        default=None, min_length=1, max_length=32,
        description="Candidate blocks, as the table was profiled with (default: all; comma-separated on a "
        "command line).",
    )  # fmt: skip

    def build(self) -> SearchSpace:
        """The resolved space; OpSpecError for a name or a combination the space refuses."""
        kwargs: dict[str, Any] = {"resolution": self.resolution, "width": self.width, "num_classes": self.num_classes}
        if self.head_c is not None:
            kwargs["head_c"] = self.head_c
        if self.candidates is not None:
            kwargs["candidates"] = tuple(self.candidates)
        return get_space(self.name, **kwargs)
