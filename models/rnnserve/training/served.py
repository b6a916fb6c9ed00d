"""Held-out evaluation of an exported model as the server runs it: its text path and onnxruntime."""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rnnserve.server.inputs import TextCodec, validate_input
from rnnserve.server.manifest import (
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    ModelManifest,
    TokenInput,
    load_manifest,
)
from rnnserve.server.runtime import OnnxModel

UNSEEN = -1  # the id of a gold label the model cannot output: never equal to a prediction
_NO_LIMIT = 1 << 30  # max_steps for validate_input: a test sentence is never split here


@dataclass
class ServedModel:
    """A repository model folder loaded the way the server loads it."""

    manifest: ModelManifest
    model: OnnxModel
    codec: TextCodec

    @classmethod
    def load(cls, folder: Path, manifest: ModelManifest | None = None) -> ServedModel:
        """The model in `folder`, described by its manifest file or by `manifest` if given."""
        manifest = manifest or load_manifest(folder / MANIFEST_FILENAME)
        version = manifest.latest_version
        path = folder / str(version) / ONNX_FILENAME
        if not isinstance(manifest.input, TokenInput):
            raise ValueError(f"{manifest.name}: text evaluation needs a token model")
        return cls(manifest, OnnxModel(manifest, version, path), TextCodec(manifest.input, "eval"))

    @property
    def vocabulary_index(self) -> dict[str, int]:
        assert isinstance(self.manifest.input, TokenInput)
        index: dict[str, int] = {}
        for i, token in enumerate(self.manifest.input.vocabulary):
            index.setdefault(token, i)
        return index

    def encode_text(self, text: str, codec: TextCodec | None = None) -> np.ndarray:
        """Token ids of `text` through the server's input path (validate_input + TextCodec)."""
        ids = validate_input(self.manifest, text, _NO_LIMIT, codec or self.codec)
        assert ids.dtype == np.int64
        return ids

    def logits(self, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The first output [time, n] of each id sequence, each run whole from the initial state.

        Sequences of equal length share one onnxruntime call, so no padding ever reaches a
        bidirectional model's backward direction.
        """
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, sequence in enumerate(sequences):
            by_length[len(sequence)].append(i)
        out: list[np.ndarray] = [np.empty(0)] * len(sequences)
        for length, members in by_length.items():
            if length == 0:
                for i in members:
                    out[i] = np.zeros((0, self.manifest.outputs[0].shape[0]), dtype=np.float32)
                continue
            for start in range(0, len(members), 256):
                chunk = members[start : start + 256]
                batch = np.stack([sequences[i] for i in chunk]).astype(np.int64)
                states = [
                    np.full(s.full_shape(len(chunk)), s.initial_value, dtype=np.float32)
                    for s in self.manifest.states
                ]
                outputs, _ = self.model.run(batch, states)
                for row, i in enumerate(chunk):
                    out[i] = outputs[0][row]
        return out


def align(gold: Sequence[str], produced: Sequence[str]) -> list[int | None]:
    """For each gold token, the index of the produced token it matches (None: never produced)."""
    matcher = difflib.SequenceMatcher(a=list(gold), b=list(produced), autojunk=False)
    where: list[int | None] = [None] * len(gold)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            where[block.a + k] = block.b + k
    return where


def tagger_accuracy(
    served: ServedModel,
    sentences: Sequence[Sequence[tuple[str, str]]],
    texts: Sequence[str] | None = None,
    codec: TextCodec | None = None,
) -> dict[str, float]:
    """Token accuracy of a tagger on (word, tag) sentences.

    Without `texts`, the words are sent as token ids (pre-tokenised); with them, each sentence's
    text goes through the text path and every gold token is scored at the produced token it
    aligns with; a gold token the text path cannot produce counts as an error. A gold tag the
    model has no label for (unseen in training) always counts as an error: it stays in the
    denominator and is also counted in `unseen_tag_tokens`.
    """
    labels = served.manifest.outputs[0].labels
    assert labels is not None
    tag_ids = {tag: i for i, tag in enumerate(labels)}
    gold_tags = [[tag_ids.get(tag, UNSEEN) for _, tag in s] for s in sentences]
    total = sum(len(s) for s in sentences)
    unseen = sum(t == UNSEEN for tags in gold_tags for t in tags)
    if texts is None:
        # token ids as a client sends them: words -> vocabulary ids, unknown words -> <unk>
        spec = served.manifest.input
        assert isinstance(spec, TokenInput) and spec.unknown_token is not None
        index = served.vocabulary_index
        ids = [np.array([index.get(w, spec.unknown_token) for w, _ in s]) for s in sentences]
        predicted = [lg.argmax(-1) for lg in served.logits(ids)]
        correct = sum(
            int((p == np.array(g)).sum()) for p, g in zip(predicted, gold_tags, strict=True)
        )
        return {"token_accuracy": correct / total, "unseen_tag_tokens": float(unseen)}
    codec = codec or served.codec
    assert codec.tokenizer is not None
    ids, produced = [], []
    for text in texts:
        ids.append(served.encode_text(text, codec))
        produced.append([t.text for t in codec.tokenizer.tokenize(text)])
    predicted = [lg.argmax(-1) for lg in served.logits(ids)]
    correct = missing = exact = 0
    for sentence, tags, tokens, guess in zip(
        sentences, gold_tags, produced, predicted, strict=True
    ):
        words = [w for w, _ in sentence]
        exact += tokens == words
        for position, at in enumerate(align(words, tokens)):
            if at is None:
                missing += 1
            elif guess[at] == tags[position]:
                correct += 1
    return {
        "token_accuracy": correct / total,
        "unproducible_token_share": missing / total,
        "sentences_reproduced": exact / len(sentences),
        "unseen_tag_tokens": float(unseen),
    }


def classifier_accuracy(
    served: ServedModel, texts: Sequence[str], labels: Sequence[int], tokens: Sequence[list[str]]
) -> dict[str, float]:
    """Accuracy of a many-to-one classifier (last step) on raw `texts` sent through the text
    path, and how many texts the server splits differently from the training `tokens`."""
    ids = [served.encode_text(text) for text in texts]
    assert served.codec.tokenizer is not None
    differ = sum(
        [t.text for t in served.codec.tokenizer.tokenize(text)] != words
        for text, words in zip(texts, tokens, strict=True)
    )
    predicted = classifier_predictions(served, ids)
    correct = sum(p == y for p, y in zip(predicted, labels, strict=True))
    return {"accuracy": correct / len(texts), "tokenisation_differs": float(differ)}


def classifier_predictions(served: ServedModel, ids: Sequence[np.ndarray]) -> list[int]:
    """The class a many-to-one classifier gives each id sequence at its last step (-1: empty)."""
    return [int(out[-1].argmax()) if len(out) else -1 for out in served.logits(ids)]


def classifier_correct(
    served: ServedModel, texts: Sequence[str], labels: Sequence[int]
) -> list[bool]:
    """Per-example correctness of `classifier_accuracy`'s predictions (raw text, text path)."""
    predicted = classifier_predictions(served, [served.encode_text(text) for text in texts])
    return [p == y for p, y in zip(predicted, labels, strict=True)]
