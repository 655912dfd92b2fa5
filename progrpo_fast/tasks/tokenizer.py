"""Word-level tokenizer for the shapes task: a fixed vocabulary, lower-cased whitespace split."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .shapes import MAX_CAPTION_WORDS, VOCABULARY

PAD, UNK = "<pad>", "<unk>"


class WordTokenizer:
    """Maps words to ids: 0 = pad, 1 = unk, then `words` (default: the shapes grammar's words)."""

    pad_id = 0
    unk_id = 1

    def __init__(self, words: Sequence[str] = VOCABULARY, max_len: int = MAX_CAPTION_WORDS):
        words = [word.lower() for word in words]
        if len(set(words)) != len(words) or PAD in words or UNK in words:
            raise ValueError("words must be unique and must not contain the pad/unk tokens")
        if any(not word or word.split() != [word] for word in words):
            raise ValueError("every vocabulary entry must be a single non-empty word")
        self.vocab: tuple[str, ...] = (PAD, UNK, *words)
        self.word_to_id = {word: i for i, word in enumerate(self.vocab)}
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str], max_len: int | None = None,
               strict: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (ids LongTensor (B, max_len), mask BoolTensor (B, max_len)), right-padded.

        Unknown words become `unk_id`, or raise ValueError naming the word when `strict`.
        A text longer than max_len raises ValueError (no silent truncation).
        """
        if isinstance(texts, str):
            raise ValueError("encode takes a list of strings; wrap a single text in a list")
        length = self.max_len if max_len is None else max_len
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"max_len must be a positive int, got {length!r}")
        ids = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            words = text.lower().split()
            if len(words) > length:
                raise ValueError(f"text {text!r} has {len(words)} words, more than max_len={length}")
            for col, word in enumerate(words):
                token = self.word_to_id.get(word)
                if token is None or token < 2:  # pad/unk spelled out in a text are unknown words
                    if strict:
                        raise ValueError(f"unknown word {word!r} in text {text!r}; the vocabulary is {self.vocab[2:]}")
                    token = self.unk_id
                ids[row, col] = token
        return ids, ids != self.pad_id

    def decode(self, ids: torch.Tensor) -> list[str]:
        """(B, L) ids -> texts; pads are dropped, unknown ids raise ValueError."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ValueError(f"ids must be a 2-D tensor (B, L), got {getattr(ids, 'shape', type(ids).__name__)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got range [{int(ids.min())}, {int(ids.max())}]")
        return [" ".join(self.vocab[i] for i in row if i != self.pad_id) for row in ids.tolist()]
