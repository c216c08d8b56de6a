"""The serving client: PredictRequest protos and REST bodies, and a loopback run against a STAND-IN for TF Serving.

`StandInPredictionService` is not TF Serving: it is a small gRPC PredictionService written for this test, backed by
the exported SavedModel. Like tensorflow_model_server it loads the SavedModel into a TF1 Session and runs the
requested SignatureDef with the request's tensors fed as they are, without comparing their shapes to the signature
(TF Serving does not either), so bad requests reach the graph's own checks; graph errors become gRPC status codes.
"""

import base64
from concurrent import futures
import json
import os

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from export import client
from export import saved_model as sm
from tf_mocov3.data import augment
from tf_mocov3.models import vit

SIZE = 32
ATOL = 1e-5


class StandInPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A test stand-in for tensorflow_model_server's Predict, backed by one exported SavedModel version."""

    def __init__(self, version_dir, model_name="mocov3"):
        self.model_name = model_name
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], version_dir)
        self.signatures = meta.signature_def
        self.requests = 0

    def run(self, signature_name, inputs):
        """Feeds numpy `inputs` to the signature; returns {output: array}. Raises tf.errors.OpError."""
        signature = self.signatures[signature_name]
        feeds = {self.graph.get_tensor_by_name(signature.inputs[k].name)._as_tf_output(): v  # pylint: disable=protected-access
                 for k, v in inputs.items()}
        names = sorted(signature.outputs)
        fetches = [self.graph.get_tensor_by_name(signature.outputs[k].name)._as_tf_output()  # pylint: disable=protected-access
                   for k in names]
        # The session's C API call: Session.run would compare feed shapes with the placeholders in Python first,
        # which TF Serving's C++ Session::Run does not do.
        values = self.session._call_tf_sessionrun(None, feeds, fetches, [], None)  # pylint: disable=protected-access
        return dict(zip(names, values))

    def Predict(self, request, context):  # pylint: disable=invalid-name
        self.requests += 1
        if request.model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request.model_spec.name}")
        name = request.model_spec.signature_name or "serving_default"
        if name not in self.signatures:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Serving signature name: {name!r} not found")
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        try:
            outputs = self.run(name, inputs)
        except tf.errors.InvalidArgumentError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, err.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for k, v in outputs.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response


def sample_images(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for (h, w), fmt in (((50, 80), "jpeg"), ((64, 40), "png"), ((36, 36), "jpeg"), ((90, 45), "png")):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append((tf.io.encode_jpeg(img) if fmt == "jpeg" else tf.io.encode_png(img)).numpy())
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(0)
    backbone = vit.build_backbone("vit_micro", SIZE, embed_dim=32, depth=2, num_heads=2)
    version_dir = sm.export_saved_model(backbone, str(tmp_path_factory.mktemp("models") / "mocov3"))
    service = StandInPredictionService(version_dir)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("localhost:0")
    server.start()
    channel = grpc.insecure_channel(f"localhost:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    yield {"backbone": backbone, "dir": version_dir, "service": service, "port": port, "stub": stub}
    channel.close()
    server.stop(None)


def live(backbone, images):
    return backbone(tf.stack([augment.eval_preprocess(i, SIZE) for i in images]), training=False).numpy()


def test_predict_request_proto():
    images = sample_images()[:2]
    request = client.build_predict_request({"image_bytes": images}, model_name="mocov3", version=7)
    assert request.model_spec.name == "mocov3"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 7
    tensor = request.inputs["image_bytes"]
    assert tensor.dtype == tf.string.as_datatype_enum
    assert [d.size for d in tensor.tensor_shape.dim] == [2]
    assert list(tensor.string_val) == images
    pixels = np.arange(2 * 5 * 4 * 3, dtype=np.uint8).reshape(2, 5, 4, 3)
    request = client.build_predict_request({"images": pixels}, model_name="m", signature_name="embed_images")
    assert request.inputs["images"].dtype == tf.uint8.as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["images"]), pixels)
    assert not request.model_spec.HasField("version")


def test_rest_body_and_url():
    images = sample_images()[:2]
    body = json.loads(json.dumps(client.build_rest_body(images)))  # JSON-serialisable as is
    assert body["signature_name"] == "serving_default"
    assert [base64.b64decode(x["b64"]) for x in body["inputs"]["image_bytes"]] == images
    assert client.rest_url("localhost:8501", "mocov3") == "http://localhost:8501/v1/models/mocov3:predict"
    assert client.rest_url("http://h:1/", "m", 3) == "http://h:1/v1/models/m/versions/3:predict"
    assert client.parse_rest_response({"outputs": [[1.0, 2.0]]})["features"].shape == (1, 2)
    both = client.parse_rest_response({"outputs": {"features": [[1.0]], "projection": [[2.0]]}})
    assert sorted(both) == ["features", "projection"]


def test_client_against_the_stand_in_server_writes_the_live_features(served, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    images = sample_images()
    names = ["b.jpg", "a.png", "sub/c.jpeg", "d.PNG"]
    for name, data in zip(names, images):
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image")
    out = str(tmp_path / "features.npy")
    code = client.main([f"--images={folder}", f"--output={out}", f"--server=localhost:{served['port']}",
                        "--batch_size=3"])
    assert code == 0
    order = sorted(str(folder / n) for n in names)
    assert open(str(tmp_path / "features.txt")).read().split() == order
    by_name = dict(zip((str(folder / n) for n in names), images))
    want = live(served["backbone"], [by_name[p] for p in order])
    np.testing.assert_allclose(np.load(out), want, atol=ATOL, rtol=0)


def _predict(stub, signature, inputs):
    return stub.Predict(client.build_predict_request(inputs, model_name="mocov3", signature_name=signature),
                        timeout=60)


@pytest.mark.parametrize("signature, inputs, message", [
    ("serving_default", {"image_bytes": [b"GIF89a-but-broken", b"\x00\x01not an image"]},
     "not a JPEG, PNG, GIF or BMP image at batch index(es)] [1]"),
    ("serving_default", {"image_bytes": np.array(b"one image, no batch", dtype=object)},
     "expects image_bytes: a 1-D string tensor [batch]"),
    ("embed_images", {"images": np.zeros((9, 9, 3), np.uint8)}, "expects images: uint8 [batch, height, width, 3]"),
    ("embed_images", {"images": np.zeros((1, 9, 9, 4), np.uint8)}, "got shape] [1 9 9 4]"),
    ("embed_images", {"images": np.zeros((1, 9, 9, 1), np.uint8)}, "got shape] [1 9 9 1]"),
    ("embed_preprocessed", {"images": np.zeros((1, SIZE, SIZE + 1, 3), np.float32)},
     f"expects images: float32 [batch, {SIZE}, {SIZE}, 3]"),
    ("embed_preprocessed", {"images": np.zeros((1, SIZE, SIZE, 3), np.uint8)}, "to be float but uint8"),
])
def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(served, signature, inputs, message):
    with pytest.raises(grpc.RpcError) as info:
        _predict(served["stub"], signature, inputs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    image = sample_images()[0]
    ok = client.parse_predict_response(_predict(served["stub"], "serving_default", {"image_bytes": [image]}))
    np.testing.assert_allclose(ok["features"], live(served["backbone"], [image]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("signature, inputs", [
    ("serving_default", {"image_bytes": np.array([], dtype=object)}),
    ("embed_images", {"images": np.zeros((0, 10, 10, 3), np.uint8)}),
    ("embed_preprocessed", {"images": np.zeros((0, SIZE, SIZE, 3), np.float32)}),
])
def test_empty_batch_gives_an_empty_result(served, signature, inputs):
    out = client.parse_predict_response(_predict(served["stub"], signature, inputs))
    assert out["features"].shape == (0, 32)


def test_warmup_requests_are_real_requests_for_every_signature(served):
    path = os.path.join(served["dir"], "assets.extra", sm.WARMUP_FILE)
    seen = set()
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        seen.add(request.model_spec.signature_name)
        response = served["stub"].Predict(request, timeout=60)
        features = tf.make_ndarray(response.outputs["features"])
        batch = next(iter(request.inputs.values())).tensor_shape.dim[0].size
        assert features.shape == (batch, 32) and np.isfinite(features).all()
    assert seen == set(sm.SIGNATURES)


def test_rest_client_posts_columnar_base64_json(served, tmp_path, monkeypatch):
    """The REST path against a stand-in HTTP handler that decodes the body exactly as TF Serving's REST API does."""
    import http.server  # pylint: disable=import-outside-toplevel
    import threading  # pylint: disable=import-outside-toplevel

    service = served["service"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # pylint: disable=invalid-name
            assert self.path == "/v1/models/mocov3:predict"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = np.array([base64.b64decode(x["b64"]) for x in body["inputs"]["image_bytes"]], dtype=object)
            out = service.run(body["signature_name"], {"image_bytes": data})
            payload = json.dumps({"outputs": out["features"].tolist()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("localhost", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        folder = tmp_path / "imgs"
        folder.mkdir()
        images = sample_images()[:2]
        for i, data in enumerate(images):
            (folder / f"{i}.img.png").write_bytes(data)
        out = str(tmp_path / "rest.npy")
        features = client.run(str(folder), out, server=f"localhost:{httpd.server_port}", protocol="rest")
        np.testing.assert_allclose(features, live(served["backbone"], images), atol=ATOL, rtol=0)
    finally:
        httpd.shutdown()
        httpd.server_close()
