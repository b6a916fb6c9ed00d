"""Versioned word tokenizers: how a word model's text becomes the tokens it was trained on.

A word-level manifest names one (`input.tokenizer`, e.g. "brown-v1"); training, export and the
server's text path all use the object registered here under that name, so text is split the same
way everywhere. A version, once shipped, never changes: a new rule is a new name.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Token:
    """One token of a text and where it starts (for error fields such as "text[12]")."""

    text: str
    start: int


class Tokenizer(Protocol):
    """Text -> the word tokens a model was trained on."""

    name: str

    def tokenize(self, text: str, limit: int | None = None) -> list[Token]:
        """The tokens of `text`, in order; with `limit`, stop soon after more than `limit` are
        found (enough to tell that a text has too many, without tokenizing all of it)."""
        ...


class PatternTokenizer:
    """Tokens are a regex's matches, optionally after lowercasing (offsets in the lowered text)."""

    def __init__(self, name: str, pattern: str, lowercase: bool) -> None:
        self.name = name
        self.pattern = pattern
        self.lowercase = lowercase
        self._regex = re.compile(pattern)

    def tokenize(self, text: str, limit: int | None = None) -> list[Token]:
        if self.lowercase:
            text = text.lower()
        matches = self._regex.finditer(text)
        if limit is not None:
            matches = itertools.islice(matches, limit + 1)
        return [Token(m.group(), m.start()) for m in matches]

    def words(self, text: str) -> list[str]:
        """Just the token texts."""
        return [token.text for token in self.tokenize(text)]


# Words with inner ' or - stay whole; every other non-space symbol is a token of its own.
LOWER_WORDS_PATTERN = r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]"

# Abbreviations that may end a sentence in the Brown corpus ("... Allen Jr."): there the period
# of the abbreviation is also the sentence's, and Brown writes both ("Jr.", "."). The list is every
# token of letters and a final period in the Brown training split (documents whose index % 10 is
# 0-7), except those whose bare word ends as many training sentences as they do ("Come in.",
# "No.", "Pa."). Dotted forms ("U.S.", "p.m.") are recognised by shape instead; single letters
# are not abbreviations there ("at temperature T." ends with "T", "." far more often than "J.").
BROWN_ABBREVIATIONS = frozenset(
    f"{word}."
    for word in [
        "Ala",
        "App",
        "Ariz",
        "Assn",
        "Atty",
        "Aubr",
        "Aug",
        "Av",
        "Ave",
        "Bldg",
        "Blvd",
        "Brig",
        "Cal",
        "Calif",
        "Capt",
        "Cf",
        "Ch",
        "Cir",
        "Cmdr",
        "Co",
        "Col",
        "Colo",
        "Conn",
        "Corp",
        "Ct",
        "Dak",
        "Dec",
        "Del",
        "Dept",
        "Dist",
        "Dr",
        "Drs",
        "Ed",
        "Eq",
        "Feb",
        "Fig",
        "Figs",
        "Fla",
        "Ga",
        "Gen",
        "Gov",
        "Gre",
        "Grev",
        "Hon",
        "Ill",
        "Inc",
        "Ind",
        "Jan",
        "Jas",
        "Jr",
        "Kan",
        "Kans",
        "Ky",
        "La",
        "Lond",
        "Lt",
        "Ltd",
        "Mar",
        "Mass",
        "McN",
        "Md",
        "Messrs",
        "Mfg",
        "Mich",
        "Minn",
        "Miss",
        "Mo",
        "Mont",
        "Mr",
        "Mrs",
        "Mt",
        "Mts",
        "Nev",
        "Nov",
        "Oct",
        "Okla",
        "Op",
        "Ore",
        "Pfc",
        "Pp",
        "Prof",
        "Pt",
        "Rd",
        "Ref",
        "Rep",
        "Reps",
        "Rev",
        "Rte",
        "Rul",
        "Ry",
        "SS",
        "Sec",
        "Sen",
        "Sens",
        "Sept",
        "Sha",
        "Shak",
        "Spec",
        "Sr",
        "St",
        "Stat",
        "Supt",
        "Tech",
        "Tenn",
        "Ter",
        "Tex",
        "USN",
        "Va",
        "Vol",
        "Vs",
        "Wash",
        "Wis",
        "Wm",
        "ca",
        "cc",
        "cf",
        "dept",
        "dia",
        "etc",
        "figs",
        "hp",
        "hr",
        "kc",
        "lbs",
        "mg",
        "mos",
        "nos",
        "nw",
        "oz",
        "pl",
        "pp",
        "sec",
        "seq",
        "sp",
        "sq",
        "var",
        "vs",
        "yrs",
    ]
)
_DOTTED = re.compile(r"[A-Za-z]+(?:\.[A-Za-z]+)+\.")
_CHUNK = re.compile(r"\S+")
_DASH = re.compile(r"--")
_OPENERS = "(["
_CLOSERS = {")": "(", "]": "["}
_MARKS = ",;:?!"


def is_brown_abbreviation(word: str) -> bool:
    """Whether `word` (ending in ".") is an abbreviation brown-v1 keeps whole at a sentence end."""
    return word in BROWN_ABBREVIATIONS or _DOTTED.fullmatch(word) is not None


class BrownTokenizer:
    """brown-v1: one sentence of ordinary English text -> Brown corpus tokens.

    The Brown corpus follows the Penn Treebank conventions this undoes:
    - `"` becomes ``` `` ``` when it opens a quotation and `''` when it closes one (an opening
      quote is attached to the word after it, a closing one to the word before; a `"` standing
      alone opens unless a quotation is open or it begins the text);
    - `,` `;` `:` `?` `!` and closing `)` `]` are split from the end of a word, `(` `[` from its
      start, `--` from anywhere in it (`here--and` is three tokens), but `10,000`, `2:30`,
      `381(a)`, `U.S.`, `don't`, `Atlanta's`, `players'` and `'em` stay whole: an apostrophe
      is never split off, so a single-quote token `'` must be written apart from its words;
    - a period is split off only at the end of the text (the input is one sentence: `Mr.` and
      `p.m.` inside it keep theirs); a final abbreviation (`Jr.`, `U.S.`, see
      `is_brown_abbreviation`) keeps its period and is followed by the sentence's own `.`
      token, and a final `ft..` gives `ft.` and `.`.
    """

    name = "brown-v1"

    def tokenize(self, text: str, limit: int | None = None) -> list[Token]:
        tokens: list[Token] = []
        chunks = list(_CHUNK.finditer(text))
        open_quotes = 0
        for number, chunk in enumerate(chunks):
            if limit is not None and len(tokens) > limit:
                break  # enough to tell the text has too many
            pieces = list(self._pieces(chunk.group(), chunk.start()))
            for index, (piece, start) in enumerate(pieces):
                at_end = number == len(chunks) - 1 and index == len(pieces) - 1
                for token in self._split_piece(piece, start, text, at_end):
                    if token.text == "``":
                        open_quotes += 1
                    elif token.text == "''":
                        open_quotes = max(0, open_quotes - 1)
                    elif token.text == '"':  # a quote with space (or nothing) on both sides
                        opening = open_quotes == 0 and token.start > 0
                        token = Token("``" if opening else "''", token.start)
                        open_quotes += 1 if opening else -min(open_quotes, 1)
                    tokens.append(token)
        return tokens

    @staticmethod
    def _pieces(chunk: str, start: int) -> Iterator[tuple[str, int]]:
        """A chunk cut at every `--`, the dashes kept as pieces of their own."""
        position = 0
        for dash in _DASH.finditer(chunk):
            if dash.start() > position:
                yield chunk[position : dash.start()], start + position
            yield "--", start + dash.start()
            position = dash.end()
        if position < len(chunk):
            yield chunk[position:], start + position

    @staticmethod
    def _quote(text: str, index: int) -> str:
        """`` or '' for the `"` at text[index], from what touches it; '"' if nothing does.

        A quote followed by space or a mark closes (`word."`, `--"?`, `")`); otherwise one after
        space, a bracket or a dash opens (`"word`, `("word`, `--"word`); any other closes.
        """
        before = text[index - 1] if index > 0 else " "
        after = text[index + 1] if index + 1 < len(text) else " "
        if before == '"':  # a run of quotes goes the way its first one went
            return BrownTokenizer._quote(text, index - 1)
        if before.isspace() and after.isspace():
            return '"'
        if after.isspace() or after in _MARKS or after in _CLOSERS or after == ".":
            return "''"
        return "``" if before.isspace() or before in _OPENERS or before == "-" else "''"

    def _split_piece(self, piece: str, start: int, text: str, at_end: bool) -> list[Token]:
        head: list[Token] = []
        while len(piece) > 1 and piece[0] in _OPENERS + '"':
            if piece[0] == '"':
                head.append(Token(self._quote(text, start), start))
            else:
                head.append(Token(piece[0], start))
            piece, start = piece[1:], start + 1
        tail: list[Token] = []  # in reverse order
        while len(piece) > 1:
            last, end = piece[-1], start + len(piece) - 1
            if last == '"':
                tail.append(Token(self._quote(text, end), end))
            elif (last in _CLOSERS and piece.count(_CLOSERS[last]) < piece.count(last)) or (
                last in _MARKS
            ):
                tail.append(Token(last, end))
                at_end = False  # "(sp.)", "U.N.??": the period before them is the word's
            elif last == "." and at_end:
                at_end = False  # one sentence, one final period
                tail.append(Token(".", end))
                if is_brown_abbreviation(piece):
                    break  # "Jr." keeps its period; the sentence's own "." follows it
            else:
                break
            piece = piece[:-1]
        if piece == '"':
            piece = self._quote(text, start)
        return [*head, Token(piece, start), *reversed(tail)]


# The sentiment model's words: lowercase, words with inner ' or -, single punctuation marks.
LOWER_WORDS = PatternTokenizer("lower-words-v1", LOWER_WORDS_PATTERN, lowercase=True)
BROWN = BrownTokenizer()
TOKENIZERS: dict[str, Tokenizer] = {tokenizer.name: tokenizer for tokenizer in (LOWER_WORDS, BROWN)}


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer registered under `name` (ValueError naming the known ones otherwise)."""
    try:
        return TOKENIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown tokenizer {name!r}; this server knows {sorted(TOKENIZERS)}"
        ) from None
