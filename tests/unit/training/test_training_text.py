"""Text in = tokens trained: Brown tokens <-> raw text; the served text path on a tiny tagger."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from rnnserve.server.inputs import TextCodec  # noqa: E402
from rnnserve.server.manifest import TokenInput, dump_manifest, file_sha256  # noqa: E402
from rnnserve.server.tokenizer import BROWN  # noqa: E402
from rnnserve.training.datasets.brown import detokenize  # noqa: E402
from rnnserve.training.datasets.words import build_vocabulary, encode_words, tokenize  # noqa: E402
from rnnserve.training.export import ExportWrapper, export_onnx  # noqa: E402
from rnnserve.training.manifest_writer import build_manifest  # noqa: E402
from rnnserve.training.model import NetworkSpec, RecurrentNet  # noqa: E402
from rnnserve.training.served import ServedModel, align, tagger_accuracy  # noqa: E402

pytestmark = pytest.mark.torch

# Brown sentences with what a person would type for them (brown.detokenize)
HARD_SENTENCES = [
    (
        "`` Only a relative handful of such reports was received '' , the jury said , "
        "`` considering the widespread interest in the election '' .",
        '"Only a relative handful of such reports was received", the jury said, "considering '
        'the widespread interest in the election".',
    ),
    (
        "Mr. Smith said , `` It's here . ''",
        'Mr. Smith said, "It\'s here."',
    ),
    ("The Aegean in 800 B.C. .", "The Aegean in 800 B.C."),
    ("Thomas Earl Loving Jr. .", "Thomas Earl Loving Jr."),
    ("approximately 3 lb. .", "approximately 3 lb.."),
    (
        "He came -- and went -- at 2:30 p.m. ( see 381(a) ) ; the players' union didn't .",
        "He came--and went--at 2:30 p.m. (see 381(a)); the players' union didn't.",
    ),
    (
        "We're getting more ' pro ' letters than ' con ' on horse race betting .",
        "We're getting more ' pro ' letters than ' con ' on horse race betting.",
    ),
    ("Do you come to me ' ? ?", "Do you come to me '??"),
    ("'' , and Berman sat alone on the stage .", '", and Berman sat alone on the stage.'),
]


@pytest.mark.parametrize(("tokens", "text"), HARD_SENTENCES)
def test_brown_tokens_become_ordinary_text_and_come_back_exactly(tokens: str, text: str) -> None:
    words = tokens.split()
    assert detokenize(words) == text
    assert [t.text for t in BROWN.tokenize(text)] == words


def test_sentiment_is_served_with_the_tokenizer_it_was_trained_with() -> None:
    snippets = [
        "It's a well-made, 'feel-good' film -- don't miss it!!",
        "BORING... 2/10 (and I'm being kind)",
    ]
    vocabulary = build_vocabulary([tokenize(s) for s in snippets], min_count=1)
    index = {w: i for i, w in enumerate(vocabulary)}
    spec = TokenInput(name="tokens", vocabulary=vocabulary, unknown_token=0)
    codec = TextCodec(spec.model_copy(update={"tokenizer": "lower-words-v1"}), "m")
    for snippet in snippets:
        assert codec.encode(snippet).tolist() == encode_words(tokenize(snippet), index)


def test_alignment_marks_the_tokens_text_cannot_produce() -> None:
    assert align(["Mr.", "Smith", "."], ["Mr", ".", "Smith", "."]) == [None, 2, 3]
    assert align(["a", "b"], ["a", "b"]) == [0, 1]


TINY_TAGGED = [
    [
        *[("Mr.", "np"), ("Smith", "np"), ("said", "vbd"), (",", ","), ("``", "``")],
        *[("It's", "pps+bez"), ("here", "rb"), (".", "."), ("''", "''")],
    ],
    [("The", "at"), ("jury", "nn"), ("left", "vbd"), ("--", "--"), ("fast", "rb"), (".", ".")],
    [("Thomas", "np"), ("Loving", "np"), ("Jr.", "np"), (".", ".")],
]


def test_a_tagger_sent_raw_text_scores_as_it_does_on_its_tokens(tmp_path: Path) -> None:
    # a tiny bidirectional tagger, exported and described as the shipped one is (brown-v1)
    words = sorted({w for s in TINY_TAGGED for w, _ in s})
    vocabulary = ["<unk>", *words]
    tags = sorted({t for s in TINY_TAGGED for _, t in s})
    torch.manual_seed(0)
    spec = NetworkSpec(
        cell="lstm",
        layers=1,
        hidden_size=8,
        output_size=len(tags),
        vocab_size=len(vocabulary),
        embedding_size=4,
        bidirectional=True,
    )
    folder = tmp_path / "tiny-brown"
    onnx_path = folder / "1" / "model.onnx"
    export_onnx(ExportWrapper(RecurrentNet(spec)).eval(), onnx_path, "logits")
    manifest = build_manifest(
        name="tiny-brown",
        description="tiny",
        task="tagger",
        spec=spec,
        parameters=1,
        vocabulary=vocabulary,
        unknown_token=0,
        tokenizer="brown-v1",
        token_pattern=None,
        lowercase=False,
        feature_names=None,
        output_meaning="logits",
        output_labels=tags,
        version=1,
        sha256=file_sha256(onnx_path),
        metrics={},
        notes={},
        opset=17,
        parity={},
        data=None,
    )
    dump_manifest(manifest, folder / "model.json")
    served = ServedModel.load(folder)
    texts = [detokenize([w for w, _ in s]) for s in TINY_TAGGED]
    assert texts[2] == "Thomas Loving Jr."
    tokens = tagger_accuracy(served, TINY_TAGGED)
    text = tagger_accuracy(served, TINY_TAGGED, texts)
    assert text["token_accuracy"] == tokens["token_accuracy"]
    assert text["unproducible_token_share"] == 0.0 and text["sentences_reproduced"] == 1.0

    # a gold tag the model has no output for is an error, never a free match
    unseen = [[(w, "fw-nn" if w == "jury" else t) for w, t in s] for s in TINY_TAGGED]
    scored = tagger_accuracy(served, unseen)
    assert scored["unseen_tag_tokens"] == 1.0
    total = sum(len(s) for s in TINY_TAGGED)
    assert scored["token_accuracy"] <= tokens["token_accuracy"]
    assert scored["token_accuracy"] * total == pytest.approx(
        tokens["token_accuracy"] * total - _correct_at(served, TINY_TAGGED, 1, 1)
    )


def _correct_at(
    served: ServedModel, sentences: list[list[tuple[str, str]]], row: int, column: int
) -> int:
    """1 if the model tags sentences[row][column] right, else 0."""
    labels = served.manifest.outputs[0].labels
    assert labels is not None
    ids = [served.vocabulary_index[w] for w, _ in sentences[row]]
    predicted = served.logits([np.array(ids)])[0].argmax(-1)
    return int(labels[int(predicted[column])] == sentences[row][column][1])


def test_the_tagger_task_scores_an_unseen_tag_as_an_error() -> None:
    from rnnserve.training.served import UNSEEN
    from rnnserve.training.tasks.sequences import TaggerTask

    torch.manual_seed(0)
    spec = NetworkSpec(
        cell="lstm",
        layers=1,
        hidden_size=4,
        output_size=2,
        vocab_size=3,
        embedding_size=2,
        bidirectional=True,
    )
    model = RecurrentNet(spec)
    words = [[1, 2, 1]]
    with torch.no_grad():
        predicted = model.forward_padded(torch.tensor(words), torch.tensor([3])).argmax(-1)[0]
    right = [int(t) for t in predicted]
    gold = {"train": (words, [right]), "test": (words, [[right[0], UNSEEN, right[2]]])}
    task = TaggerTask(gold, batch_size=1)
    assert task.evaluate(model, "train")["token_accuracy"] == 1.0
    assert task.evaluate(model, "test")["token_accuracy"] == pytest.approx(2 / 3)
