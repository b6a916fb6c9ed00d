"""Turn raw per-step model outputs into what a reply carries: rows, probabilities, top-k, argmax."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from rnnserve.server.domain import (
    FloatArray,
    OutputFormat,
    OutputOptions,
    OutputResult,
    OutputSteps,
)
from rnnserve.server.errors import InvalidInput
from rnnserve.server.manifest import OutputSpec


def check_options(options: OutputOptions) -> None:
    """Refuse options that cannot be served (a top-k of less than one)."""
    if options.format is OutputFormat.TOP_K and options.top_k < 1:
        raise InvalidInput(f"top_k must be at least 1, got {options.top_k}", field="output.top_k")


def softmax(logits: FloatArray) -> FloatArray:
    """Softmax over the last axis, computed stably."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: FloatArray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return result


def build_outputs(
    specs: Sequence[OutputSpec], raw: Sequence[FloatArray], options: OutputOptions
) -> list[OutputResult]:
    """One OutputResult per model output from its [steps, *shape] tensor, as `options` ask.

    Logits outputs always carry argmax (and its labels where the model has labels); PROBABILITIES
    and TOP_K apply softmax to logits and leave real-valued outputs as they are; NONE carries no
    tensor at all, only the argmax of logits outputs (the cheapest reply).
    """
    results = []
    for spec, tensor in zip(specs, raw, strict=True):
        rows = tensor[-1:] if options.steps is OutputSteps.LAST else tensor
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        result = OutputResult(name=spec.name, meaning=spec.meaning)
        if spec.meaning != "logits" or len(spec.shape) != 1:
            if options.format is not OutputFormat.NONE:
                result.tensor = rows
            results.append(result)
            continue
        argmax = rows.argmax(axis=-1).astype(np.int64, copy=False)  # no copy where intp is int64
        result.argmax = argmax
        if spec.labels is not None:
            result.labels = [spec.labels[i] for i in argmax.tolist()]
        if options.format is OutputFormat.NONE:
            pass
        elif options.format is OutputFormat.RAW:
            result.tensor = rows
        elif options.format is OutputFormat.PROBABILITIES:
            result.tensor = softmax(rows)
        else:
            k = min(options.top_k, rows.shape[-1])
            top, top_probabilities = top_k(softmax(rows), k)
            result.top_k_indices = top
            result.top_k_probabilities = top_probabilities
            if spec.labels is not None:
                result.top_k_labels = [[spec.labels[i] for i in row] for row in top.tolist()]
        results.append(result)
    return results


def top_k(probabilities: FloatArray, k: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """The k largest entries of each row [rows, n], largest first: (indices, values)."""
    count = probabilities.shape[-1]
    if probabilities.shape[0] == 1:  # the common case (one step, or the last step): 1-D is cheaper
        row = probabilities[0]
        top = np.argpartition(row, count - k)[count - k :] if k < count else np.arange(count)
        top = top[np.argsort(-row[top], kind="stable")]
        return top[None].astype(np.int64), row[top][None]
    # argpartition then sort only the k: O(n) per row instead of a full sort of a vocabulary
    top = np.argpartition(probabilities, count - k, axis=-1)[:, count - k :]
    rows = np.arange(probabilities.shape[0])[:, None]
    order = np.argsort(-probabilities[rows, top], axis=-1, kind="stable")
    top = top[rows, order]
    return top.astype(np.int64), probabilities[rows, top]
