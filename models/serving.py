"""The classifier as a self-contained MLflow pyfunc model.

The checkpoint it carries rebuilds the network (architecture, classes, input
channels, image size, normalisation), and `predict` takes encoded image bytes,
so a served model needs nothing but the request:

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG/JPEG>"]]}}

and answers, per image, the predicted `label`, its `score` and one `p_<class>`
probability column per class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
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
    network = build_classifier(spec.model, len(spec.classes), spec.in_channels)
    network.load_state_dict(checkpoint["model"])
    return network.eval(), spec


def preprocess(images: list[bytes], spec: ClassifierSpec) -> torch.Tensor:
    """Encoded images to the normalised float batch the network was trained on."""
    arrays = np.stack([decode(data, spec.in_channels, spec.image_size, DEFAULT_MAX_PIXELS) for data in images])
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean)[None, :, None, None]
    std = torch.tensor(spec.std)[None, :, None, None]
    return (x - mean) / std


class ImageClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        checkpoint = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
        self.network, self.spec = network_from_checkpoint(checkpoint)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network.to(self.device)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        column = model_input["image"] if "image" in model_input else model_input.iloc[:, 0]
        images = [bytes(value) if not isinstance(value, str) else _base64(value) for value in column]
        probabilities = []
        with torch.no_grad():
            for start in range(0, len(images), 256):
                x = preprocess(images[start:start + 256], self.spec).to(self.device)
                probabilities.append(torch.softmax(self.network(x), dim=1).cpu())
        probs = torch.cat(probabilities).numpy() if probabilities else np.zeros((0, len(self.spec.classes)))
        best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
        out = pd.DataFrame({"label": [self.spec.classes[i] for i in best], "score": probs.max(axis=1) if len(probs) else []})
        for index, name in enumerate(self.spec.classes):
            out[f"p_{name}"] = probs[:, index]
        return out


def _base64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def log_classifier(checkpoint_path: Path, spec: ClassifierSpec, example_image: bytes):
    """Log the pyfunc model under `model/` of the active run, with signature and input example."""
    from mlflow.models import infer_signature

    repo = Path(__file__).resolve().parents[1]
    example = pd.DataFrame({"image": [example_image]})
    output = pd.DataFrame({"label": [spec.classes[0]], "score": [1.0], **{f"p_{c}": [0.0] for c in spec.classes}})
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"]
    import PIL
    import torchvision

    requirements += [f"pillow=={PIL.__version__}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    return mlflow.pyfunc.log_model(
        name=ARTIFACT_NAME,
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={"checkpoint": str(checkpoint_path)},
        code_paths=[str(repo / "models"), str(repo / "imaging")],
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=requirements,
    )


def load_classifier(model_uri: str) -> ImageClassifier:
    """The pyfunc model at `model_uri`, unwrapped to reach its network and spec."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
