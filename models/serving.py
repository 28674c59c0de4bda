"""The classifier as a self-contained MLflow pyfunc model.

The checkpoint it carries rebuilds the network (architecture, classes, input
channels, image size, normalisation), so a served model needs nothing but the
request. Its one input column, `image`, holds per row either an encoded image
(PNG/JPEG/... as base64 text over HTTP, raw bytes in-process) or a raw uint8
pixel array (H x W or H x W x C, C = 1, 3 or 4), in any request format that
`mlflow models serve` takes:

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG>"], [[[0, 12, ...], ...]]]}}
    {"dataframe_records": [{"image": "<base64 PNG>"}]}
    {"inputs": {"image": ["<base64 PNG>", "<base64 PNG>"]}}
    {"inputs": {"image": [[[0, 12, ...], ...]]}}
    text/csv: a header line `image`, then one base64 PNG per line

`inputs` and `instances` take encoded images, or pixel arrays all of one
shape: the scoring server casts them to one numpy array of the signature's
string type, which it cannot do for a mixture; the `dataframe_*` formats take
any mixture of encoded images and pixel arrays of any sizes.

Images of any size and colour mode are converted and resized as the training
images were. The answer, per image: the predicted `label`, its `score` and one
`p_<class>` probability column per class. A bad row (not base64, not an image,
over the pixel limit, an array of the wrong shape or values) is refused with
an MlflowException naming the row and the problem, which the scoring server
answers with HTTP 400.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
import pandas as pd
import torch

from imaging.images import DEFAULT_MAX_PIXELS, decode
from models.classifiers import build_classifier

ARTIFACT_NAME = "model"  # runs:/<train run>/model


@dataclass
class ClassifierSpec:
    """What rebuilds a trained network and feeds it."""

    model: str
    classes: list[str]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def save_checkpoint(path: Path, network: torch.nn.Module, spec: ClassifierSpec, **extra) -> None:
    torch.save({"spec": asdict(spec), "model": network.state_dict(), **extra}, path)


def network_from_checkpoint(checkpoint: dict) -> tuple[torch.nn.Module, ClassifierSpec]:
    spec = ClassifierSpec(**checkpoint["spec"])
    network = build_classifier(spec.model, len(spec.classes), spec.in_channels, image_size=spec.image_size)
    network.load_state_dict(checkpoint["model"])
    return network.eval(), spec


def preprocess(images: list[bytes], spec: ClassifierSpec) -> torch.Tensor:
    """Encoded images to the normalised float batch the network was trained on."""
    from imaging.batches import to_model_input

    return to_model_input(torch.from_numpy(to_batch(images, spec)).permute(0, 3, 1, 2), spec.mean, spec.std)


INPUT_COLUMN = "image"
# the served model refuses images over this many pixels before decoding them
SERVING_LIMIT = ("served model's limit", "send a smaller image")
INPUT_HELP = (
    "image: per row a base64 PNG/JPEG (bytes in-process) or a uint8 pixel array H x W or H x W x C (C = 1, 3, 4); "
    "any size or colour mode, converted as the training images were"
)


class BadRequest(ValueError):
    """One bad row or a badly shaped request; the message names it."""


def _from_base64(text: str) -> bytes:
    text = text.strip()
    if text.startswith("data:") and "," in text[:100]:  # a data URI: data:image/png;base64,....
        text = text.split(",", 1)[1]
    text = re.sub(r"\s+", "", text)  # encoders wrap lines every 76 characters
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"not valid base64 ({error}); send the image file's bytes base64-encoded") from None


def _from_pixels(value, spec: ClassifierSpec, max_pixels: int) -> np.ndarray:
    from PIL import Image

    from imaging.images import conform, to_array

    try:
        array = np.asarray(value)
    except ValueError:
        raise BadRequest("a ragged pixel array (rows of different lengths); send H x W or H x W x C numbers") from None
    if array.dtype.kind in "US":  # the scoring server casts {"inputs": ...} to the signature's string type: "12" for 12
        try:
            array = array.astype(np.float64)
        except ValueError:
            raise BadRequest("a pixel array holding text that is not a number; send H x W or H x W x C numbers 0..255") from None
    if array.size == 0:
        raise BadRequest(f"empty (shape {array.shape}); send a base64-encoded image or an H x W or H x W x C pixel array")
    if array.dtype == object or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise BadRequest(f"a pixel array of shape {array.shape}; send H x W (grey) or H x W x C with C = 1, 3 or 4, values 0..255")
    if array.shape[0] * array.shape[1] > max_pixels:
        raise BadRequest(f"a {array.shape[1]}x{array.shape[0]} pixel array, over the {SERVING_LIMIT[0]} of {max_pixels:,} pixels; {SERVING_LIMIT[1]}")
    if not (np.issubdtype(array.dtype, np.integer) or (np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0))):
        raise BadRequest(f"non-integer pixel values ({array.dtype}); send raw 0..255 pixels, not normalised ones")
    if array.min() < 0 or array.max() > 255:
        raise BadRequest(f"pixel values from {array.min():g} to {array.max():g}; they must lie in 0..255")
    array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[2]]
    return conform(to_array(Image.fromarray(array, mode), spec.in_channels), spec.image_size)


def to_batch(values, spec: ClassifierSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Request values (encoded bytes, base64 text or pixel arrays) to uint8 N x H x W x C; BadRequest names the bad row."""
    from imaging.images import BadImage

    arrays = []
    for row, value in enumerate(values):
        try:
            if isinstance(value, str):
                value = _from_base64(value)
            if isinstance(value, (bytes, bytearray, memoryview)):
                try:
                    arrays.append(decode(bytes(value), spec.in_channels, spec.image_size, max_pixels, SERVING_LIMIT))
                except BadImage as error:
                    raise BadRequest(str(error)) from None
            elif isinstance(value, (list, tuple, np.ndarray)):
                arrays.append(_from_pixels(value, spec, max_pixels))
            else:
                raise BadRequest(f"{str(value)[:20]!r} is a {type(value).__name__}, not an image; send a base64-encoded image or a pixel array")
        except BadRequest as error:
            raise BadRequest(f"{INPUT_COLUMN} {row}: {error}") from None
    if not arrays:
        return np.zeros((0, spec.image_size, spec.image_size, spec.in_channels), np.uint8)
    return np.stack(arrays)


def request_values(model_input) -> list:
    """The `image` values of a request as the scoring server or a caller hands them over."""
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:  # (the scoring server has dropped the other columns)
            raise BadRequest(f"the request has no '{INPUT_COLUMN}' column; send the images in a column named '{INPUT_COLUMN}'")
        values = list(model_input[INPUT_COLUMN])
    elif isinstance(model_input, dict):
        if INPUT_COLUMN not in model_input:
            raise BadRequest(f"the request has inputs {list(model_input)} but no '{INPUT_COLUMN}'; send the images under '{INPUT_COLUMN}'")
        values = list(model_input[INPUT_COLUMN])
    elif isinstance(model_input, (list, np.ndarray)):
        values = list(model_input)
    else:
        raise BadRequest(f"cannot read images from a {type(model_input).__name__}; send a DataFrame (or dict) with an '{INPUT_COLUMN}' column")
    # {"inputs": {"image": ["<b64>", "<b64>"]}} reaches the model as one row holding the list of strings
    flat = []
    for value in values:
        if isinstance(value, (list, tuple, np.ndarray)) and len(value) and all(isinstance(v, (str, bytes)) for v in value):
            flat.extend(value)
        else:
            flat.append(value)
    return flat


class RequestRefused(MlflowException):
    """A bad request, answered by the scoring server with HTTP 400 and this message.

    The server prefixes an MlflowException's message with the whole request (megabytes of base64
    for one large image); this one keeps its message to the problem.
    """

    def __init__(self, message: str):
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._problem

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_problem"):
            self._problem = value


class ImageClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        checkpoint = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
        self.network, self.spec = network_from_checkpoint(checkpoint)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network.to(self.device)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        try:
            batch = to_batch(request_values(model_input), self.spec)
        except BadRequest as error:
            raise RequestRefused(str(error)) from None
        return self.predict_arrays(batch)

    def predict_arrays(self, batch: np.ndarray) -> pd.DataFrame:
        """uint8 N x H x W x C at the model's size and channels to the answer table."""
        from imaging.batches import to_model_input

        spec = self.spec
        probabilities = []
        with torch.no_grad():
            for start in range(0, len(batch), 256):
                images = torch.from_numpy(batch[start:start + 256]).to(self.device).permute(0, 3, 1, 2)
                probabilities.append(torch.softmax(self.network(to_model_input(images, spec.mean, spec.std)), dim=1).cpu())
        probs = torch.cat(probabilities).numpy() if probabilities else np.zeros((0, len(spec.classes)), np.float32)
        best = probs.argmax(axis=1)
        out = pd.DataFrame({"label": [spec.classes[i] for i in best], "score": probs.max(axis=1)})
        for index, name in enumerate(spec.classes):
            out[f"p_{name}"] = probs[:, index]
        return out


def log_classifier(checkpoint_path: Path, spec: ClassifierSpec, example_image: bytes):
    """Log the pyfunc model under `model/` of the active run, with signature and input example.

    The signature's one input column `image` is typed string: a row holds base64 text over HTTP, and
    MLflow's schema check passes an object column through untouched, so pixel arrays (and bytes
    in-process) reach `predict` too; `metadata.input` spells it out. It is not typed Any because the
    scoring server reads a text/csv request with `pandas.read_csv(dtype=<the schema's pandas types>)`,
    and an Any column has no pandas type: every CSV request was refused with "Failed to get pandas
    types". It is marked optional so that a request without it reaches `predict`, whose error names
    the column (MLflow's own schema check would echo the whole request back).
    """
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import DataType
    from mlflow.types.schema import ColSpec, Schema

    repo = Path(__file__).resolve().parents[1]
    example = pd.DataFrame({INPUT_COLUMN: [base64.b64encode(example_image).decode("ascii")]})
    output = pd.DataFrame({"label": [spec.classes[0]], "score": [1.0], **{f"p_{c}": [0.0] for c in spec.classes}})
    signature = ModelSignature(inputs=Schema([ColSpec(DataType.string, INPUT_COLUMN, required=False)]), outputs=infer_signature(example, output).outputs)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"]
    import PIL
    import torchvision

    requirements += [f"pillow=={PIL.__version__}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    return mlflow.pyfunc.log_model(
        name=ARTIFACT_NAME,
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={"checkpoint": str(checkpoint_path)},
        code_paths=[str(repo / "models"), str(repo / "imaging")],
        signature=signature,
        input_example=example,
        pip_requirements=requirements,
        metadata={"input": INPUT_HELP, "classes": list(spec.classes), "image_size": spec.image_size, "channels": spec.in_channels},
    )


def load_classifier(model_uri: str) -> ImageClassifier:
    """The pyfunc model at `model_uri`, unwrapped to reach its network and spec."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
