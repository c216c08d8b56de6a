r"""Sends a folder of images to a running TF Serving model and writes their features as .npy.

  python -m export.client --images=FOLDER --output=features.npy \
      [--server=localhost:8500] [--protocol=grpc|rest] [--model_name=mocov3] [--version=N] \
      [--batch_size=16] [--output_key=features]

Images (.jpg .jpeg .png .gif .bmp, searched recursively, sorted by path) are sent as encoded bytes to the
`serving_default` signature, which decodes and pre-processes them in the graph, so the client needs no image
library. It writes OUTPUT (float32 [num_images, D]) and OUTPUT with `.txt` instead of `.npy` (the image paths,
one per line, in row order).

gRPC (default, port 8500) needs `tensorflow-serving-api` (and so TensorFlow); REST (`--protocol=rest`, port 8501)
needs only numpy: the body is TF Serving's columnar JSON with base64 bytes,
  {"signature_name": "serving_default", "inputs": {"image_bytes": [{"b64": "..."}, ...]}}
posted to http://SERVER/v1/models/NAME[/versions/N]:predict.
This module does not import tf_mocov3.
"""

import base64
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

SERVING_DEFAULT = "serving_default"
BYTES_INPUT = "image_bytes"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def list_images(folder):
    """Image files under `folder` (recursively), sorted by path."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images={folder} is not a directory; pass a folder of JPEG/PNG files.")
    paths = []
    for root, _, files in os.walk(folder):
        paths.extend(os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"--images={folder} holds no {'/'.join(IMAGE_EXTENSIONS)} file.")
    return sorted(paths)


# === gRPC ===


def build_predict_request(inputs, *, model_name, signature_name=SERVING_DEFAULT, version=None):
    """A tensorflow_serving PredictRequest.

    Args:
        inputs: dict input name -> numpy array (a list of bytes for `image_bytes`).
        model_name: the server's --model_name.
        signature_name: e.g. "serving_default", "embed_images", "embed_preprocessed".
        version: int or None (the newest version the server has).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        if isinstance(value, (list, tuple)):
            value = np.array(list(value), dtype=object)
        if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":  # bytes
            proto = tf.make_tensor_proto(value, dtype=tf.string, shape=value.shape)
        else:
            proto = tf.make_tensor_proto(np.asarray(value))
        request.inputs[name].CopyFrom(proto)
    return request


def parse_predict_response(response):
    """dict output name -> numpy array of a PredictResponse."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


class GrpcPredictor:
    """Calls PredictionService/Predict on `server` (host:port)."""

    def __init__(self, server, model_name, *, version=None, signature_name=SERVING_DEFAULT, timeout=60.0):
        import grpc  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel

        self.channel = grpc.insecure_channel(server, options=[("grpc.max_send_message_length", -1),
                                                              ("grpc.max_receive_message_length", -1)])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name, self.version, self.signature_name, self.timeout = model_name, version, signature_name, timeout

    def __call__(self, image_bytes):
        request = build_predict_request({BYTES_INPUT: list(image_bytes)}, model_name=self.model_name,
                                        signature_name=self.signature_name, version=self.version)
        return parse_predict_response(self.stub.Predict(request, timeout=self.timeout))

    def close(self):
        self.channel.close()


# === REST ===


def build_rest_body(image_bytes, signature_name=SERVING_DEFAULT):
    """TF Serving's columnar JSON request with base64-encoded bytes."""
    return {"signature_name": signature_name,
            "inputs": {BYTES_INPUT: [{"b64": base64.b64encode(b).decode("ascii")} for b in image_bytes]}}


def rest_url(server, model_name, version=None):
    host = server if server.startswith(("http://", "https://")) else f"http://{server}"
    path = f"/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")
    return f"{host.rstrip('/')}{path}:predict"


def parse_rest_response(body):
    """dict output name -> numpy array of a columnar REST response ({"outputs": ...})."""
    outputs = body["outputs"]
    if not isinstance(outputs, dict):  # a single output is returned without its name
        outputs = {"features": outputs}
    return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}


class RestPredictor:
    """POSTs JSON to TF Serving's REST API (http://server/v1/models/NAME:predict)."""

    def __init__(self, server, model_name, *, version=None, signature_name=SERVING_DEFAULT, timeout=60.0):
        self.url = rest_url(server, model_name, version)
        self.signature_name, self.timeout = signature_name, timeout

    def __call__(self, image_bytes):
        data = json.dumps(build_rest_body(image_bytes, self.signature_name)).encode()
        request = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return parse_rest_response(json.load(response))
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise RuntimeError(f"{self.url} answered HTTP {err.code}: {detail}") from err
        except urllib.error.URLError as err:
            raise RuntimeError(f"Cannot reach {self.url} ({err.reason}); is tensorflow_model_server running with "
                               f"--rest_api_port?") from err

    def close(self):
        pass


# === Folder -> features ===


def embed_folder(paths, predict, *, batch_size=16, output_key="features"):
    """Features of the images at `paths`, sent in batches through `predict` (bytes list -> dict of arrays)."""
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start:start + batch_size]:
            with open(path, "rb") as f:
                batch.append(f.read())
        outputs = predict(batch)
        if output_key not in outputs:
            raise KeyError(f"The server returned outputs {sorted(outputs)}, not {output_key!r}; export with "
                           f"--with_projector for 'projection' or use --output_key=features.")
        chunks.append(np.asarray(outputs[output_key], dtype=np.float32))
    return np.concatenate(chunks, axis=0)


def run(images, output, *, server, protocol="grpc", model_name="mocov3", version=None, batch_size=16,
        output_key="features", timeout=60.0):
    """The whole client: folder -> server -> OUTPUT.npy (+ OUTPUT.txt with the paths). Returns the features."""
    paths = list_images(images)
    make = GrpcPredictor if protocol == "grpc" else RestPredictor
    predict = make(server, model_name, version=version, timeout=timeout)
    try:
        features = embed_folder(paths, predict, batch_size=batch_size, output_key=output_key)
    finally:
        predict.close()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.save(output, features)
    with open(os.path.splitext(output)[0] + ".txt", "w") as f:
        f.write("\n".join(paths) + "\n")
    return features


def main(argv=None):
    import argparse  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(prog="python -m export.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="Folder of images (searched recursively).")
    parser.add_argument("--output", required=True, help="Where to write the features (.npy).")
    parser.add_argument("--server", default=None, help="host:port (default localhost:8500 for gRPC, "
                        "localhost:8501 for REST).")
    parser.add_argument("--protocol", choices=("grpc", "rest"), default="grpc")
    parser.add_argument("--model_name", default="mocov3")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output_key", default="features", help="'features' or 'projection'.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds per request.")
    args = parser.parse_args(argv)
    server = args.server or ("localhost:8500" if args.protocol == "grpc" else "localhost:8501")
    try:
        features = run(args.images, args.output, server=server, protocol=args.protocol, model_name=args.model_name,
                       version=args.version, batch_size=args.batch_size, output_key=args.output_key,
                       timeout=args.timeout)
    except (FileNotFoundError, KeyError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # pylint: disable=broad-except
        if hasattr(err, "code") and hasattr(err, "details"):  # grpc.RpcError, without importing grpc for REST
            print(f"error: the gRPC call to {server} failed with {err.code().name}: {err.details()}",
                  file=sys.stderr)
            return 1
        raise
    print(f"Wrote {args.output}: features {features.shape} of {features.shape[0]} images.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
