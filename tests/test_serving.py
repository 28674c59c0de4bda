"""The served classifier: every request format, raw pixel arrays, and a clear 400 for each kind
of bad request, from a real `mlflow models serve` of the registered champion."""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import free_port, pattern, venv_env, wait_for_http
from models.serving import BadRequest, ClassifierSpec, to_batch

SPEC = ClassifierSpec("smallcnn", ["ant", "bee"], 1, 16, (0.5,), (0.5,))


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_encoded_images_and_pixel_arrays_become_the_same_batch():
    grey = pattern(1, 3, 16)
    encoded = png(grey)
    text = base64.b64encode(encoded).decode()
    wrapped = base64.encodebytes(encoded).decode()  # line breaks every 76 characters, as MLflow's own client sends
    batch = to_batch([encoded, text, wrapped, "data:image/png;base64," + text, grey.tolist(), grey[:, :, None].tolist()], SPEC)
    assert batch.shape == (6, 16, 16, 1) and all((b == grey[:, :, None]).all() for b in batch)
    # colour and size are converted as training images are: RGB to grey, 32 px to 16 px
    rgb = np.repeat(np.kron(grey, np.ones((2, 2), np.uint8))[:, :, None], 3, axis=2)
    from_array, from_png = to_batch([rgb.tolist()], SPEC), to_batch([png(rgb)], SPEC)
    assert from_array.shape == (1, 16, 16, 1) and (from_array == from_png).all()
    reference = np.asarray(Image.fromarray(rgb).convert("L").resize((16, 16), Image.Resampling.BILINEAR))
    assert (from_array[0, :, :, 0] == reference).all()


def test_pixel_arrays_cast_to_text_by_the_scoring_server_are_read_as_numbers():
    # {"inputs": {"image": [pixels]}} reaches the model as numpy text ("12"), the signature's column type being string
    grey = pattern(0, 1, 16)
    assert (to_batch([grey.astype(str), grey[:, :, None].astype(str)], SPEC) == grey[:, :, None]).all()
    with pytest.raises(BadRequest, match=r"^image 0: a pixel array holding text that is not a number"):
        to_batch([np.array([["1", "x"], ["2", "3"]])], SPEC)
    with pytest.raises(BadRequest, match=r"^image 0: non-integer pixel values"):
        to_batch([np.array([["1.5", "2"], ["2", "3"]])], SPEC)


@pytest.mark.parametrize("value, message", [
    ("@@@", r"^image 0: not valid base64 \(.*\); send the image file's bytes base64-encoded$"),
    (base64.b64encode(b"hello").decode(), r"^image 0: not an image \(Pillow cannot identify the format\)$"),
    (np.zeros((2, 2, 2), int).tolist(), r"^image 0: a pixel array of shape \(2, 2, 2\); send H x W \(grey\) or H x W x C with C = 1, 3 or 4"),
    ([[0.5, 0.1], [0.2, 0.3]], r"^image 0: non-integer pixel values \(float64\); send raw 0..255 pixels, not normalised ones$"),
    ([[0, 300], [2, 3]], r"^image 0: pixel values from 0 to 300; they must lie in 0..255$"),
    ([[1, 2], [3]], r"^image 0: a ragged pixel array"),
    ([], r"^image 0: empty"),
    (7, r"^image 0: '7' is a int, not an image"),
])
def test_each_bad_value_is_refused_with_its_row_and_problem(value, message):
    with pytest.raises(BadRequest, match=message):
        to_batch([value], SPEC)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding():
    with pytest.raises(BadRequest, match=r"^image 1: 100x100 = 10,000 pixels is over the served model's limit of 5,000 .*send a smaller image$"):
        to_batch([png(pattern(0, 0, 16)), png(np.zeros((100, 100), np.uint8))], SPEC, max_pixels=5_000)


def _post(port: int, payload, content_type: str = "application/json") -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def champion(tmp_path, experiment):
    """A tiny classifier trained on two classes, registered as champion; (model uri, test image bytes)."""
    from conftest import make_folder
    from pipelines.register import register
    from pipelines.train import train

    data = make_folder(tmp_path / "shapes", classes=("ant", "bee"), per_class=16)
    train({"data": str(data), "model": "smallcnn", "epochs": 2, "batch_size": 8, "lr": 3e-3, "device": "cpu"})
    done = register({"registered_model": f"serve-{uuid.uuid4().hex[:8]}"})
    images = [p.read_bytes() for p in sorted(data.rglob("*.png"))[:6]]
    return done.uri, images


def test_the_real_server_answers_every_format_as_in_process_and_refuses_bad_requests_clearly(champion, tmp_path):
    uri, images = champion
    expected = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": images}))
    columns = [c for c in expected.columns if c.startswith("p_")]
    assert columns == ["p_ant", "p_bee"]
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=venv_env(),  # the server execs uvicorn from PATH
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, tmp_path / "server.log")
        b64 = [base64.b64encode(image).decode() for image in images]
        pixels = [np.asarray(Image.open(io.BytesIO(image))).tolist() for image in images]
        good = {
            "dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[v] for v in b64]}},
            "dataframe_records": {"dataframe_records": [{"image": v} for v in b64]},
            "inputs": {"inputs": {"image": b64}},
            "inputs with pixel arrays": {"inputs": {"image": pixels}},
            "instances": {"instances": [{"image": v} for v in b64]},
            "dataframe_split mixing base64 and pixel arrays": {"dataframe_split": {"columns": ["image"], "data": [[b64[0]]] + [[p] for p in pixels[1:]]}},
        }
        # text/csv, as pandas writes it: MLflow reads it with read_csv(dtype=<the signature's pandas types>),
        # which an Any-typed column broke ("Failed to get pandas types", HTTP 400 with a stack trace)
        good["text/csv"] = ("text/csv", pd.DataFrame({"image": b64}).to_csv(index=False))
        for name, payload in good.items():
            content_type, payload = payload if isinstance(payload, tuple) else ("application/json", payload)
            status, body = _post(port, payload, content_type)
            assert status == 200, (name, body)
            served = pd.DataFrame(body["predictions"])
            assert list(served["label"]) == list(expected["label"]), name
            np.testing.assert_allclose(served[columns].to_numpy(), expected[columns].to_numpy(), atol=1e-6, err_msg=name)

        huge = io.BytesIO()
        Image.new("L", (10_000, 10_000)).save(huge, format="PNG")  # 100 Mpx: over the 89.5 Mpx limit
        bad = [
            ({"inputs": {"image": [b64[0], "not base64!"]}}, "image 1: not valid base64"),
            ({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"%PDF-1.4").decode()]]}}, "image 0: not an image"),
            ({"inputs": {"image": [base64.b64encode(huge.getvalue()).decode()]}}, "image 0: 10000x10000 = 100,000,000 pixels is over the served model's limit"),
            ({"dataframe_split": {"columns": ["picture"], "data": [[b64[0]]]}}, "the request has no 'image' column"),
            ({"inputs": {"image": [[[[1, 2]]]]}}, "image 0: a pixel array of shape (1, 1, 2)"),
            (b"{not json", "Ensure that input is a valid JSON"),
            # `inputs` is cast to one numpy array of the signature's type before the model sees it (a mixture: use dataframe_split)
            ({"inputs": {"image": [b64[0], pixels[1]]}}, "inhomogeneous shape"),
        ]
        bad.append((("text/csv", pd.DataFrame({"image": [b64[0], "not base64!"]}).to_csv(index=False)), "image 1: not valid base64"))
        for payload, message in bad:
            content_type, payload = payload if isinstance(payload, tuple) else ("application/json", payload)
            status, body = _post(port, payload, content_type)
            assert status == 400 and message in body["message"], body
            assert len(body["message"]) < 400  # the problem, not the request echoed back
        status, body = _post(port, good["inputs"])  # still answering
        assert status == 200 and len(body["predictions"]) == len(images)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
