"""Date-format conversion (Deep Learning from Scratch 2, ch. 7-8): "Aug 19, 2003" -> "2003-08-19".

Questions come in the four en_US formats of the book's ``date.txt`` — ``M/d/yy``, ``MMM d, y``,
``MMMM d, y`` and ``EEEE, MMMM d, y`` — each equally likely, in original case (50%), UPPER (25%) or
lower (25%), for dates uniform over 1970-01-01 … 2017-07-24. Answers are ISO ``yyyy-mm-dd``.

Batches are ``(src, tgt)``:
    src: (B, 29) LongTensor, question characters (reversed when ``reverse_input``), right-padded with PAD
    tgt: (B, 10) LongTensor, answer characters; the model prepends the start symbol ``_`` itself
"""

from __future__ import annotations

import datetime
import string
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from .sharding import ResumableLoader, sharded_loader

SRC_LEN = 29  # longest question: "WEDNESDAY, SEPTEMBER 28, 1988" (the book's left-justify width)
TGT_LEN = 10  # yyyy-mm-dd
PAD = "<pad>"
START = "_"  # the book's decoder start symbol (its file separates question and answer with it)

# Fixed, data-independent vocabulary: parse_inputs works without setup() and checkpoints stay valid.
ITOS: list[str] = [PAD, START, " ", ",", "-", "/", *string.digits, *string.ascii_uppercase,
                   *string.ascii_lowercase]
STOI: dict[str, int] = {c: i for i, c in enumerate(ITOS)}
PAD_ID = STOI[PAD]
START_ID = STOI[START]

# Hard-coded English names: strftime("%B") would depend on the machine's locale.
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FORMATS = ["M/d/yy", "MMM d, y", "MMMM d, y", "EEEE, MMMM d, y"]
CASES = ["original", "upper", "lower"]
CASE_PROBS = [0.5, 0.25, 0.25]
FIRST_DAY = datetime.date(1970, 1, 1)
LAST_DAY = datetime.date(2017, 7, 24)

BOOK_SEED = 1984  # dataset/sequence.py load_data(seed=1984)


def format_date(d: datetime.date, fmt: str) -> str:
    """Render ``d`` in one of the four en_US ``FORMATS`` (CLDR pattern letters, as Babel does)."""
    month = MONTHS[d.month - 1]
    if fmt == "M/d/yy":
        return f"{d.month}/{d.day}/{d.year % 100:02d}"
    if fmt == "MMM d, y":
        return f"{month[:3]} {d.day}, {d.year}"
    if fmt == "MMMM d, y":
        return f"{month} {d.day}, {d.year}"
    if fmt == "EEEE, MMMM d, y":
        return f"{WEEKDAYS[d.weekday()]}, {month} {d.day}, {d.year}"
    raise ValueError(f"unknown date format {fmt!r}; expected one of {FORMATS}")


def generate_dates(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` (question, answer) pairs; the same ``seed`` always gives the same pairs."""
    rng = np.random.default_rng(seed)
    ordinals = rng.integers(FIRST_DAY.toordinal(), LAST_DAY.toordinal() + 1, size=n)
    fmts = rng.integers(0, len(FORMATS), size=n)
    cases = rng.choice(len(CASES), size=n, p=CASE_PROBS)
    questions, answers = [], []
    for o, f, c in zip(ordinals.tolist(), fmts.tolist(), cases.tolist()):
        d = datetime.date.fromordinal(o)
        q = format_date(d, FORMATS[f])
        q = q.upper() if CASES[c] == "upper" else q.lower() if CASES[c] == "lower" else q
        questions.append(q)
        answers.append(d.isoformat())
    return questions, answers


def read_date_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a file in the book's ``date.txt`` layout: question left-justified to 29 chars, ``_``, answer.

    Raises FileNotFoundError naming the path, ValueError naming file and line for a malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"date file not found: {path}")
    questions, answers = [], []
    with path.open(encoding="utf-8", errors="replace", newline=None) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            if len(line) != SRC_LEN + 1 + TGT_LEN or line[SRC_LEN] != START:
                raise ValueError(f"{where}: expected {SRC_LEN} question characters, '{START}' and a "
                                 f"{TGT_LEN}-character answer, got {line!r}")
            q, a = line[:SRC_LEN].rstrip(" "), line[SRC_LEN + 1:]
            try:
                datetime.date.fromisoformat(a)
            except ValueError:
                raise ValueError(f"{where}: answer {a!r} is not an ISO date yyyy-mm-dd") from None
            if not q:
                raise ValueError(f"{where}: empty question")
            bad = next(((i, c) for i, c in enumerate(q) if c not in STOI or c in (PAD, START)), None)
            if bad is not None:
                raise ValueError(f"{where}: character {bad[1]!r} at column {bad[0] + 1} is outside "
                                 "the vocabulary")
            questions.append(q)
            answers.append(a)
    if not questions:
        raise ValueError(f"{path}: no question lines found")
    return questions, answers


def encode_question(q: str, reverse: bool) -> list[int]:
    """Question string -> ``SRC_LEN`` ids, reversed if asked, then right-padded with PAD.

    Reversing before padding (the book pads first, then reverses, putting spaces in front) keeps the
    question's last characters — the year — at fixed positions and lets the LSTM skip the padding.
    """
    chars = q[::-1] if reverse else q
    return [STOI[c] for c in chars] + [PAD_ID] * (SRC_LEN - len(chars))


def book_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The book's split (dataset/sequence.py): shuffle arange(n) with seed 1984, last n // 10 = test."""
    indices = np.arange(n)
    state = np.random.get_state()  # the book seeds the global RNG; don't leave it changed for others
    try:
        np.random.seed(BOOK_SEED)
        np.random.shuffle(indices)
    finally:
        np.random.set_state(state)
    split_at = n - n // 10
    return indices[:split_at], indices[split_at:]


class DatesDataModule(pl.LightningDataModule):
    """Generated (or read from a ``date.txt``-layout file) date questions with ISO answers.

    split="random": test = ``n_test`` random examples (seeded by ``seed``).
    split="book":   the book's own split (seed 1984 shuffle, last N // 10 are test); ``n_test`` is ignored.
    In both, validation is the last ``val_fraction`` of the remaining (training) examples.
    """

    def __init__(
        self,
        n_samples: Annotated[int, ">= 2"] = 50000,
        n_test: Annotated[int, ">= 1"] = 5000,
        val_fraction: Annotated[float, ">= 0", "< 1"] = 0.1,
        seed: int = 0,
        batch_size: Annotated[int, ">= 1"] = 128,
        num_workers: Annotated[int, ">= 0"] = 0,
        reverse_input: bool = True,
        path: str | None = None,  # a file in the book's date.txt layout instead of generated data
        split: Literal["random", "book"] = "random",  # book: the book's seed-1984 split
    ) -> None:
        super().__init__()
        if split not in ("random", "book"):
            raise ValueError(f"split={split!r} is not allowed: expected one of 'random', 'book'")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r} is not allowed: expected a number ≥ 0 and < 1")
        if path is None and not n_test < n_samples:
            raise ValueError(f"n_test={n_test!r} is not allowed: expected fewer than n_samples={n_samples}")
        self.save_hyperparameters()
        self.n_samples, self.n_test, self.val_fraction = n_samples, n_test, val_fraction
        self.seed, self.batch_size, self.num_workers = seed, batch_size, num_workers
        self.reverse_input, self.path, self.split = reverse_input, path, split
        self.questions: list[str] = []
        self.answers: list[str] = []
        self.train_idx = self.val_idx = self.test_idx = np.zeros(0, dtype=np.int64)

    @property
    def dims(self) -> dict[str, Any]:
        return {"vocab_size": len(ITOS), "pad_id": PAD_ID, "start_id": START_ID, "src_len": SRC_LEN,
                "tgt_len": TGT_LEN, "itos": list(ITOS), "src_reversed": self.reverse_input}

    def setup(self, stage: str | None = None) -> None:
        if self.questions:
            return
        if self.path is not None:
            self.questions, self.answers = read_date_file(self.path)
        else:
            self.questions, self.answers = generate_dates(self.n_samples, self.seed)
        n = len(self.questions)
        if self.split == "book":
            train_idx, self.test_idx = book_split(n)
        else:
            if not 0 < self.n_test < n:
                raise ValueError(f"n_test must be in (0, {n}), got {self.n_test}")
            perm = np.random.default_rng(self.seed + 1).permutation(n)
            train_idx, self.test_idx = perm[:n - self.n_test], perm[n - self.n_test:]
        n_val = int(round(self.val_fraction * len(train_idx)))
        self.train_idx, self.val_idx = train_idx[:len(train_idx) - n_val], train_idx[len(train_idx) - n_val:]
        self._src = torch.tensor([encode_question(q, self.reverse_input) for q in self.questions])
        self._tgt = torch.tensor([[STOI[c] for c in a] for a in self.answers])

    def _tensors(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return self._src[idx_t], self._tgt[idx_t]

    def train_dataloader(self) -> DataLoader:
        # A generator-seeded shuffle, deliberately: the one-epoch presets' >= 99.9% was measured with this
        # order (epoch e draws from a generator seeded with seed + e; epoch 0's is the measured one), and
        # with the sharded (seed, epoch) permutation of labbook.datamodules.sharding the seq2seq preset reached
        # 97.7% on the book's split.
        return ResumableLoader(TensorDataset(*self._tensors(self.train_idx)), batch_size=self.batch_size,
                               shuffle=True, num_workers=self.num_workers, generator=torch.Generator(),
                               persistent_workers=self.num_workers > 0, trainer=self.trainer, seed=self.seed)

    def _eval_loader(self, idx: np.ndarray) -> DataLoader:
        # Under DDP each process scores a disjoint, unpadded slice (labbook.datamodules.sharding): Lightning's
        # default sampler would score some questions twice and bias exact_match.
        return sharded_loader(*self._tensors(idx), batch_size=self.batch_size, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_idx)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_idx)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def example_inputs(self, n: int = 3) -> list[str]:
        """The first ``n`` questions of the validation split (else test), as ``parse_inputs`` takes them: a logged
        model's input example. Sets the data up."""
        self.setup("fit")
        idx = self.val_idx if len(self.val_idx) else self.test_idx
        return [self.questions[i] for i in idx[: max(0, n)].tolist()]

    def parse_inputs(self, lines: list[str]) -> torch.Tensor:
        """Free-text questions -> (N, 29) LongTensor, encoded exactly as in training."""
        rows = []
        for n, line in enumerate(lines, start=1):
            q = line.strip()
            if not q:
                raise ValueError(f"input {n}: empty question")
            if len(q) > SRC_LEN:
                raise ValueError(f"input {n}: question {q!r} is {len(q)} characters long, "
                                 f"at most {SRC_LEN} allowed")
            for i, c in enumerate(q):
                if c not in STOI or c in (PAD, START):
                    raise ValueError(f"input {n}: character {c!r} at position {i + 1} of {q!r} is "
                                     "outside the vocabulary (letters, digits, space , / -)")
            rows.append(encode_question(q, self.reverse_input))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), SRC_LEN)

    def format_outputs(self, y: torch.Tensor) -> list[str]:
        """(N, 10) answer ids -> one string per row (PAD and start symbols dropped)."""
        return ["".join(ITOS[i] for i in row if i not in (PAD_ID, START_ID)) for row in y.tolist()]
