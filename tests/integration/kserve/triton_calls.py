"""tritonclient against a running rnnserve, run as its own process: `python triton_calls.py ADDR
SCENARIO JSON` prints a JSON result.

A separate process because tritonclient's generated code and the server's define the same
protocol messages (package `inference`) in protobuf's one default descriptor pool, which refuses a
second definition; a real client is another process anyway.
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

IDENTITY_HEADER = "x-client-id"


def _input(args: dict[str, Any], data: Any) -> triton.InferInput:
    datatype = args.get("datatype", "INT64")
    array = np.asarray(data, dtype=np.int64 if datatype == "INT64" else np.float32)
    if "shape" in args:
        shape = args["shape"]
    else:
        shape = [1, *array.shape]
        array = array.reshape(shape)
    tensor = triton.InferInput(args.get("input", "tokens"), shape, datatype)
    tensor.set_data_from_numpy(array.reshape(shape))
    return tensor


def _outputs(result: triton.InferResult, names: list[str]) -> dict[str, Any]:
    response = result.get_response()
    params = {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in response.parameters.items()
    }
    return {
        "outputs": {name: result.as_numpy(name).tolist() for name in names},
        "parameters": params,
        "id": response.id,
    }


def _error(err: InferenceServerException) -> dict[str, Any]:
    return {"error": {"status": str(err.status()), "message": err.message()}}


def health(client: triton.InferenceServerClient, args: dict[str, Any]) -> dict[str, Any]:
    model = args["model"]
    config = client.get_model_config(model, as_json=True)["config"]
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata(model, as_json=True),
        "config": config,
        "statistics": client.get_inference_statistics(model, as_json=True),
    }


def sequences(client: triton.InferenceServerClient, args: dict[str, Any]) -> dict[str, Any]:
    """Messages of several sequences, interleaved round robin: on one stream or unary calls."""
    headers = {IDENTITY_HEADER: args["identity"]} if args.get("identity") else None
    plan = [(sid, index, chunk) for sid, chunks in args["sequences"].items()
            for index, chunk in enumerate(chunks)]  # fmt: skip
    plan.sort(key=lambda item: (item[1], item[0]))
    outputs = args["outputs"]
    results: dict[str, list[Any]] = {sid: [] for sid in args["sequences"]}
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    if args["mode"] == "stream":
        client.start_stream(callback=lambda result, error: answers.put((result, error)),
                            headers=headers)  # fmt: skip
    for sid, index, chunk in plan:
        last = index == len(args["sequences"][sid]) - 1
        sequence_id: Any = int(sid) if sid.isdigit() else sid
        call = {
            "model_name": args["model"],
            "inputs": [_input(args, chunk)],
            "outputs": [triton.InferRequestedOutput(name) for name in outputs],
            "request_id": f"{sid}/{index}",
            "sequence_id": sequence_id,
            "sequence_start": index == 0,
            "sequence_end": last and args.get("end", True),
        }
        if args["mode"] == "stream":
            client.async_stream_infer(**call)
            result, error = answers.get(timeout=30)
        else:
            try:
                result, error = client.infer(**call, headers=headers), None
            except InferenceServerException as err:
                result, error = None, err
        results[sid].append(_error(error) if error is not None else _outputs(result, outputs))
    if args["mode"] == "stream":
        client.stop_stream()
    return results


def infer(client: triton.InferenceServerClient, args: dict[str, Any]) -> dict[str, Any]:
    """One unary or streamed request shaped by `args` (for the refusal cases)."""
    headers = {IDENTITY_HEADER: args["identity"]} if args.get("identity") else None
    call = {
        "model_name": args["model"],
        "inputs": [_input(args, args["data"])],
        "outputs": [triton.InferRequestedOutput(name) for name in args.get("outputs", [])],
        "sequence_id": args.get("sequence_id", 0),
        "sequence_start": args.get("start", False),
        "sequence_end": args.get("end", False),
    }
    if args.get("stream"):
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)),
                            headers=headers)  # fmt: skip
        client.async_stream_infer(**call)
        result, error = answers.get(timeout=30)
        client.stop_stream()
        return _error(error) if error is not None else _outputs(result, args.get("outputs", []))
    try:
        result = client.infer(**call, headers=headers)
    except InferenceServerException as err:
        return _error(err)
    return _outputs(result, args.get("outputs", []))


def main() -> None:
    address, scenario, raw = sys.argv[1], sys.argv[2], sys.argv[3]
    client = triton.InferenceServerClient(url=address)
    handler = {"health": health, "sequences": sequences, "infer": infer}[scenario]
    print(json.dumps(handler(client, json.loads(raw))))
    client.close()


if __name__ == "__main__":
    main()
