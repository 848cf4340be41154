"""DatesDataModule: the generator against its spec and the book's file, the book-file reader and split."""

from __future__ import annotations

import datetime
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from labbook.datamodules.dates import (
    FIRST_DAY,
    LAST_DAY,
    PAD_ID,
    SRC_LEN,
    START_ID,
    TGT_LEN,
    DatesDataModule,
    book_split,
    generate_dates,
    read_date_file,
)

# An independent parser (not the generator's tables) so a wrong table in the generator shows up.
MONTHS = "january february march april may june july august september october november december".split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
PATTERNS = {
    "M/d/yy": re.compile(r"(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<yy>\d\d)"),
    "MMM d, y": re.compile(r"(?P<mon>[a-z]{3}) (?P<d>\d{1,2}), (?P<y>\d{4})", re.I),
    "MMMM d, y": re.compile(r"(?P<month>[a-z]{4,9}) (?P<d>\d{1,2}), (?P<y>\d{4})", re.I),
    "EEEE, MMMM d, y": re.compile(r"(?P<wd>[a-z]+), (?P<month>[a-z]+) (?P<d>\d{1,2}), (?P<y>\d{4})", re.I),
}


def parse(q: str) -> tuple[str, datetime.date]:
    """Question -> (format, date); 'May 3, 1999' is both MMM and MMMM: reported as MMMM."""
    for fmt in ("M/d/yy", "EEEE, MMMM d, y", "MMMM d, y", "MMM d, y"):
        m = PATTERNS[fmt].fullmatch(q)
        if not m:
            continue
        g = m.groupdict()
        if fmt == "M/d/yy":
            yy = int(g["yy"])
            return fmt, datetime.date(1900 + yy if yy >= 70 else 2000 + yy, int(g["m"]), int(g["d"]))
        if fmt == "MMM d, y":
            month = [mo[:3] for mo in MONTHS].index(g["mon"].lower()) + 1
        else:
            if g["month"].lower() not in MONTHS:
                continue
            month = MONTHS.index(g["month"].lower()) + 1
        d = datetime.date(int(g["y"]), month, int(g["d"]))
        if fmt == "EEEE, MMMM d, y":
            assert g["wd"].lower() == DAYS[d.weekday()], f"wrong weekday in {q!r}"
        return fmt, d
    raise AssertionError(f"question in no known format: {q!r}")


def case_of(q: str) -> str | None:
    letters = "".join(c for c in q if c.isalpha())
    if not letters:
        return None
    return "upper" if letters.isupper() else "lower" if letters.islower() else "original"


def distribution(questions: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    fmts = Counter(parse(q)[0] for q in questions)
    cases = Counter(c for c in map(case_of, questions) if c is not None)
    return ({k: v / len(questions) for k, v in fmts.items()},
            {k: v / sum(cases.values()) for k, v in cases.items()})


@pytest.fixture(scope="module")
def sample() -> tuple[list[str], list[str]]:
    return generate_dates(6000, seed=123)


def test_every_format_parses_back_to_the_answer(sample: tuple[list[str], list[str]]) -> None:
    questions, answers = sample
    seen = Counter()
    for q, a in zip(questions, answers):
        fmt, d = parse(q)  # also asserts the weekday
        seen[fmt] += 1
        assert d.isoformat() == a, q
        assert len(q) <= SRC_LEN and len(a) == TGT_LEN
    assert set(seen) == set(PATTERNS)


def test_short_format_has_no_leading_zeros(sample: tuple[list[str], list[str]]) -> None:
    short = [q for q in sample[0] if "/" in q]
    assert short and all(re.fullmatch(r"[1-9]\d?/[1-9]\d?/\d\d", q) for q in short)
    assert all(not re.search(r" 0\d,", q) for q in sample[0])  # "Aug 9, 2003", not "Aug 09, 2003"


def test_formats_equally_likely_and_case_mix(sample: tuple[list[str], list[str]]) -> None:
    fmts, cases = distribution(sample[0])
    # "May" in MMM is indistinguishable from MMMM: compare the two month-name formats together.
    assert fmts["M/d/yy"] == pytest.approx(0.25, abs=0.025)
    assert fmts["EEEE, MMMM d, y"] == pytest.approx(0.25, abs=0.025)
    assert fmts["MMM d, y"] + fmts["MMMM d, y"] == pytest.approx(0.5, abs=0.03)
    assert cases == pytest.approx({"original": 0.5, "upper": 0.25, "lower": 0.25}, abs=0.03)


def test_date_range() -> None:
    _, answers = generate_dates(20000, seed=1)
    days = sorted(datetime.date.fromisoformat(a) for a in answers)
    assert FIRST_DAY <= days[0] and days[-1] <= LAST_DAY
    # uniform over ~17,000 days: 20,000 draws come within a few weeks of both ends
    assert (days[0] - FIRST_DAY).days < 30 and (LAST_DAY - days[-1]).days < 30
    years = Counter(d.year for d in days)
    assert years[1970] == pytest.approx(20000 * 365 / 17372, rel=0.2)


def test_generator_is_deterministic_by_seed() -> None:
    assert generate_dates(200, seed=7) == generate_dates(200, seed=7)
    assert generate_dates(200, seed=7) != generate_dates(200, seed=8)
    a, b = DatesDataModule(n_samples=300, n_test=50, seed=3), DatesDataModule(n_samples=300, n_test=50, seed=3)
    a.setup("fit"), b.setup("fit")
    assert np.array_equal(a.test_idx, b.test_idx)
    assert torch.equal(next(iter(a.train_dataloader()))[0], next(iter(b.train_dataloader()))[0])


def test_distribution_close_to_the_books_file(sample: tuple[list[str], list[str]], book_dates: Path) -> None:
    book_q, _ = read_date_file(book_dates)
    ours_f, ours_c = distribution(sample[0])
    book_f, book_c = distribution(book_q[:20000])
    for k in PATTERNS:
        assert ours_f.get(k, 0) == pytest.approx(book_f.get(k, 0), abs=0.025), k
    assert ours_c == pytest.approx(book_c, abs=0.03)


def test_default_split_is_45000_train_5000_test() -> None:
    """The README: 45,000 / 5,000 train/test, validation carved from train, by default."""
    dm = DatesDataModule()
    dm.setup("fit")
    assert (len(dm.train_idx) + len(dm.val_idx), len(dm.test_idx)) == (45000, 5000)
    assert len(dm.val_idx) == 4500


def test_splits_and_batches() -> None:
    dm = DatesDataModule(n_samples=1000, n_test=100, val_fraction=0.1, batch_size=16, seed=0)
    dm.setup("fit")
    assert (len(dm.train_idx), len(dm.val_idx), len(dm.test_idx)) == (810, 90, 100)
    all_idx = np.concatenate([dm.train_idx, dm.val_idx, dm.test_idx])
    assert len(set(all_idx.tolist())) == 1000
    src, tgt = next(iter(dm.train_dataloader()))
    assert src.shape == (16, SRC_LEN) and tgt.shape == (16, TGT_LEN) and src.dtype == torch.long
    d = dm.dims
    assert d["vocab_size"] == len(d["itos"]) and d["itos"][d["pad_id"]] == "<pad>" and d["itos"][d["start_id"]] == "_"
    assert (d["src_len"], d["tgt_len"]) == (29, 10)


def test_dims_and_parse_inputs_need_no_setup() -> None:
    dm = DatesDataModule()
    x = dm.parse_inputs(["  Aug 19, 2003 ", "2/10/93"])
    assert x.shape == (2, SRC_LEN)
    itos = dm.dims["itos"]
    assert "".join(itos[i] for i in x[0].tolist() if i != PAD_ID) == "3002 ,91 guA"  # reversed, like training
    assert x[0, 12:].eq(PAD_ID).all()
    forward = DatesDataModule(reverse_input=False).parse_inputs(["Aug 19, 2003"])
    assert "".join(itos[i] for i in forward[0].tolist() if i != PAD_ID) == "Aug 19, 2003"


def test_parse_inputs_errors_name_character_and_position() -> None:
    dm = DatesDataModule()
    with pytest.raises(ValueError, match=r"'\.' at position 4"):
        dm.parse_inputs(["Aug. 19, 2003"])
    with pytest.raises(ValueError, match="at most 29"):
        dm.parse_inputs(["x" * 30])
    with pytest.raises(ValueError, match="'_'"):
        dm.parse_inputs(["Aug_19"])


def test_format_outputs_drops_padding_and_start() -> None:
    dm = DatesDataModule()
    stoi = {c: i for i, c in enumerate(dm.dims["itos"])}
    ids = torch.tensor([[stoi[c] for c in "2003-08-19"], [START_ID] + [stoi["1"]] * 3 + [PAD_ID] * 6])
    assert dm.format_outputs(ids) == ["2003-08-19", "111"]


def test_training_data_encoding_matches_parse_inputs() -> None:
    dm = DatesDataModule(n_samples=200, n_test=20, seed=5)
    dm.setup("fit")
    i = int(dm.test_idx[0])
    assert torch.equal(dm.parse_inputs([dm.questions[i]])[0], dm._src[i])
    assert dm.format_outputs(dm._tgt[i: i + 1]) == [dm.answers[i]]


# ---- the book's file layout ---------------------------------------------------------------------
def write_book_layout(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{q:<29}_{a}\n" for q, a in pairs))
    return path


def test_reads_the_books_layout(tmp_path: Path) -> None:
    pairs = [("september 27, 1994", "1994-09-27"), ("TUESDAY, SEPTEMBER 25, 1984", "1984-09-25"),
             ("2/10/93", "1993-02-10")]
    f = write_book_layout(tmp_path / "date.txt", pairs)
    assert len(f.read_text().splitlines()[0]) == 40
    assert read_date_file(f) == ([q for q, _ in pairs], [a for _, a in pairs])
    dm = DatesDataModule(path=str(f), n_test=1, val_fraction=0.0)
    dm.setup("fit")
    assert sorted(dm.questions) == sorted(q for q, _ in pairs)


@pytest.mark.parametrize("bad_line, message", [
    ("Aug 19, 2003                 -2003-08-19", "line 2"),  # no '_' separator
    ("Aug 19, 2003                 _2003-13-19", r"line 2: answer '2003-13-19'"),
    ("Aug 19, 2003_", "line 2"),
    ("Aug. 19, 2003                _2003-08-19", r"line 2: character '\.' at column 4"),
])
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(f"{'2/10/93':<29}_1993-02-10\n{bad_line}\n")
    with pytest.raises(ValueError, match=message) as err:
        read_date_file(f)
    assert str(f) in str(err.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        DatesDataModule(path=str(missing)).setup("fit")


def test_book_split_reproduces_the_books_shuffle() -> None:
    state = np.random.get_state()
    train, test = book_split(50000)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG left as it was
    # the book's code: numpy.random.seed(1984); numpy.random.shuffle(indices); last len // 10 = test
    np.random.seed(1984)
    indices = np.arange(50000)
    np.random.shuffle(indices)
    np.random.set_state(state)
    assert np.array_equal(train, indices[:45000]) and np.array_equal(test, indices[45000:])
    assert test[:3].tolist() == [27156, 41538, 82] and train[0] == 21921


def test_book_file_with_book_split(book_dates: Path) -> None:
    dm = DatesDataModule(path=str(book_dates), split="book", val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.questions) == 50000 and (len(dm.train_idx), len(dm.test_idx)) == (45000, 5000)
    first_test = int(dm.test_idx[0])
    assert (dm.questions[first_test], dm.answers[first_test]) == ("10/15/94", "1994-10-15")
    assert dm.format_outputs(next(iter(dm.test_dataloader()))[1][:1]) == ["1994-10-15"]
