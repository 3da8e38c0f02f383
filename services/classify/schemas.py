"""The classification domain's contracts: registered models, activation, training-job parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from services.types import UtcDateTime

# Importable without TensorFlow (the CLI, the API's validation); models/architectures builds them.
ARCH_NAMES = ("alexnet", "inception_v3", "inception_v4", "inception_resnet_v2")
MODE_NAMES = ("scratch", "feature-extraction", "fine-tuning", "fe+ft")
Arch = Literal["alexnet", "inception_v3", "inception_v4", "inception_resnet_v2"]
Mode = Literal["scratch", "feature-extraction", "fine-tuning", "fe+ft"]
DEFAULT_IMAGE_SIZE = {"alexnet": 227, "inception_v3": 299, "inception_v4": 299, "inception_resnet_v2": 299}
MIN_IMAGE_SIZE = {"alexnet": 32, "inception_v3": 75, "inception_v4": 75, "inception_resnet_v2": 75}
IMAGENET_FILES = {
    "inception_v3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inception_resnet_v2": "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inception_v4": "an Inception-v4 backbone weights file (.weights.h5)",
    "alexnet": "an AlexNet backbone weights file (.weights.h5)",
}


def checkpoint_file(arch: str, init: str | None) -> Path:
    """The file a checkpoint path names (a run folder means its model.keras), or ValueError saying what
    is expected; nothing is ever downloaded."""
    expected = (f"an ImageNet weights file without top ({IMAGENET_FILES[arch]}), or a semtag run folder "
                "(runs/NAME) or its model.keras")
    if not init:
        raise ValueError(f"this mode starts from a checkpoint: give --init PATH, {expected}")
    path = Path(init)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; expected {expected}. Nothing is downloaded.")
    return path


class ModelRead(BaseModel):
    """A registered ONNX model: provenance, metrics, file, and whether it is the active one."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    version: str
    task: str
    architecture: str
    mode: str | None = None
    parent: str | None = None
    dataset_manifest_sha256: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    file_path: str
    file_sha256: str
    active: bool
    created_at: UtcDateTime | None = None


class ModelList(BaseModel):
    models: list[ModelRead]


class ActivationRead(ModelRead):
    queued_images: int = Field(description="images queued for classification by the newly active model")


class TrainingParams(BaseModel):
    """Parameters of the ``training`` job: dataset → training → ONNX export (+ INT8) → registry."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"data": "/data/SEM_dataset", "arch": "inception_v3", "mode": "fine-tuning",
         "init": "/weights/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "epochs": 30,
         "batch_size": 64, "image_size": 299, "int8": True}]})

    data: str = Field(min_length=1, description="a dataset folder (one folder per category) or a manifest on "
                                                "the worker, or \"labels\" for the curators' labels in the database")
    arch: Arch = "inception_v3"
    mode: Mode = "scratch"
    init: str | None = Field(None, description="checkpoint path on the worker: ImageNet weights (no top) or a run")
    name: str = Field("", pattern=r"^[A-Za-z0-9_.-]{0,40}$", description="suffix of the run folder")
    epochs: int = Field(10, ge=1, le=1000)
    fe_epochs: int | None = Field(None, ge=0, le=1000, description="fe+ft: epochs of feature extraction first")
    batch_size: int = Field(32, ge=1, le=4096)
    image_size: int | None = Field(None, ge=32, le=1024, description="input side (default 299; 227 for AlexNet)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    lr: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    int8: bool = False
    augment: bool = True

    @field_validator("data")
    @classmethod
    def _data_exists(cls, v: str) -> str:
        if v != "labels" and not Path(v).exists():
            raise ValueError(f"dataset {v} does not exist on this machine")
        return v

    @model_validator(mode="after")
    def _checkpoint_and_size(self) -> TrainingParams:
        if self.mode != "scratch":
            try:
                checkpoint_file(self.arch, self.init)
            except ValueError as exc:
                raise PydanticCustomError("missing_checkpoint", "{message}", {"message": str(exc)}) from None
        elif self.init is not None:
            raise ValueError("mode scratch starts from random weights; drop --init or choose another mode")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE[self.arch]:
            raise ValueError(f"{self.arch} needs an image size of at least {MIN_IMAGE_SIZE[self.arch]}")
        return self
