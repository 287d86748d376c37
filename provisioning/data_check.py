"""Check a site's local data against the schema a job's training script expects, reading only local files.

The training script fails on the first bad row, inside a job and on the server's schedule, and
``encode_features`` maps some bad values to a class without any error (a ``sex`` of ``"male"`` becomes female). This
check runs before the site starts. It lists every problem with the file, the column, the first offending line and
the value, and summarizes rows, class balance and missing values per column. It sends nothing anywhere.

The rules for the flchain schema mirror ``app_custom.data.tabular``: the columns are ``RAW_COLUMNS`` plus the label
``LABEL``, and the value sets and ranges are those ``encode_features`` can encode. ``encode_features`` runs last on
every file, so a rule missing here still surfaces as its own error.

Exceptions:
    DataCheckError: the data has problems. ``problems`` lists each one with the file and column.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from app_custom.data.tabular import LABEL, LEAKING_COLUMNS, DataError, encode_features

SPLITS = ("train", "test")


class DataCheckError(ValueError):
    """Raised when site data does not match the schema; ``problems`` contains one line per problem."""

    def __init__(self, data_dir: Path, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"site data in {data_dir} has {len(problems)} problem(s):\n{listing}")


@dataclass(frozen=True)
class ColumnRule:
    """Rule for the values of one raw column."""

    name: str
    kind: Literal["numeric", "category"]
    allowed: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    missing_allowed: bool = False


@dataclass(frozen=True)
class DataSchema:
    """The columns and binary label a training script reads from ``train.csv`` and ``test.csv``."""

    name: str
    label: str
    columns: tuple[ColumnRule, ...]


FLCHAIN_SCHEMA = DataSchema(
    name="flchain",
    label=LABEL,
    columns=(
        ColumnRule("age", "numeric", minimum=0, maximum=120),
        ColumnRule("sex", "category", allowed=("F", "M")),
        ColumnRule("sample.yr", "numeric"),
        ColumnRule("kappa", "numeric", minimum=0),
        ColumnRule("lambda", "numeric", minimum=0),
        ColumnRule("flc.grp", "numeric", minimum=1, maximum=10),
        ColumnRule("creatinine", "numeric", minimum=0, missing_allowed=True),
        ColumnRule("mgus", "category", allowed=("no", "yes", "0", "1", "0.0", "1.0", "False", "True")),
    ),
)

SCHEMAS = {"tabular": FLCHAIN_SCHEMA}
"""Data schema of each training script key (``app_custom.flare.site_trainer.SCRIPTS``)."""


@dataclass
class SplitSummary:
    """Rows, class balance and missing values of one split file."""

    split: str
    file: Path
    rows: int
    positives: int
    missing: dict[str, int]

    @property
    def positive_rate(self) -> float:
        return self.positives / self.rows if self.rows else 0.0


@dataclass
class DataReport:
    """Summary of data that passed the check, and warnings that do not stop training."""

    data_dir: Path
    schema: DataSchema
    splits: list[SplitSummary] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_site_data(data_dir: Path, schema: DataSchema = FLCHAIN_SCHEMA) -> DataReport:
    """Check ``train.csv`` and ``test.csv`` in ``data_dir`` against ``schema``.

    Raises:
        DataCheckError: listing every problem found, each naming the file, the column, the line and the value.
    """
    data_dir = Path(data_dir)
    report = DataReport(data_dir=data_dir, schema=schema)
    problems: list[str] = []
    if not data_dir.is_dir():
        raise DataCheckError(data_dir, [f"data folder {data_dir} does not exist: put train.csv and test.csv there"])
    for split in SPLITS:
        summary = _check_split(data_dir / f"{split}.csv", split, schema, problems, report.warnings)
        if summary is not None:
            report.splits.append(summary)
    if problems:
        raise DataCheckError(data_dir, problems)
    return report


def _read_csv(path: Path, problems: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        problems.append(f"{path.name}: file not found in {path.parent}; put the site's {path.stem} rows there")
        return None
    try:
        with warnings.catch_warnings():
            # Rows longer than the header would otherwise lose their last fields without an error.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=True, index_col=False)
    except pd.errors.ParserWarning:
        problems.append(f"{path.name}: some rows have more fields than the header; fix the separators")
        return None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: not a readable CSV file ({type(exc).__name__}: {exc})")
        return None
    if frame.empty:
        problems.append(f"{path.name}: has a header but no rows")
        return None
    return frame


def _check_split(
    path: Path, split: str, schema: DataSchema, problems: list[str], warnings: list[str]
) -> SplitSummary | None:
    frame = _read_csv(path, problems)
    if frame is None:
        return None
    expected = [rule.name for rule in schema.columns] + [schema.label]
    missing_columns = [name for name in expected if name not in frame.columns]
    if missing_columns:
        problems.append(f"{path.name}: missing columns {missing_columns}; expected columns {expected}")
    extra = [name for name in frame.columns if name not in expected]
    if extra:
        leaking = [name for name in extra if name in LEAKING_COLUMNS]
        note = f" ({leaking} describe the outcome; remove them)" if leaking else ""
        warnings.append(f"{path.name}: columns {extra} are not used by training{note}")
    found_before = len(problems)
    for rule in schema.columns:
        if rule.name in frame.columns:
            _check_column(path.name, frame[rule.name], rule, problems)
    positives = _check_label(path.name, frame, schema.label, problems)
    if len(problems) == found_before and not missing_columns:
        try:
            encode_features(frame)
        except DataError as exc:
            problems.append(f"{path.name}: {exc}")
    counts = {name: int(frame[name].isna().sum()) for name in expected if name in frame.columns}
    summary = SplitSummary(split=split, file=path, rows=len(frame), positives=positives, missing=counts)
    if positives in (0, summary.rows):
        warnings.append(
            f"{path.name}: every row has {schema.label}={int(positives > 0)}; metrics such as ROC AUC "
            "are undefined for this split"
        )
    return summary


def _first(mask: pd.Series, column: pd.Series) -> str:
    """Describe the first row where ``mask`` holds: its CSV line (the header is line 1) and value."""
    index = mask[mask].index[0]
    return f"first at line {index + 2}: {column[index]!r}"


def _check_column(file: str, column: pd.Series, rule: ColumnRule, problems: list[str]) -> None:
    missing = column.isna()
    if missing.any() and not rule.missing_allowed:
        line = missing[missing].index[0] + 2
        problems.append(
            f"{file}: column {rule.name!r} has {int(missing.sum())} missing values (first at line {line}); "
            "fill them or drop those rows"
        )
    present = ~missing
    if rule.kind == "category":
        unexpected = present & ~column.isin(rule.allowed)
        if unexpected.any():
            values = sorted(set(column[unexpected]))[:5]
            problems.append(
                f"{file}: column {rule.name!r} has unexpected values {values} "
                f"({_first(unexpected, column)}); use one of {list(rule.allowed)}"
            )
        return
    numbers = pd.to_numeric(column, errors="coerce")
    not_numeric = present & numbers.isna()
    if not_numeric.any():
        problems.append(
            f"{file}: column {rule.name!r} has {int(not_numeric.sum())} non-numeric values "
            f"({_first(not_numeric, column)}); use plain numbers with a '.' decimal point"
        )
    too_low = numbers < rule.minimum if rule.minimum is not None else pd.Series(False, index=column.index)
    too_high = numbers > rule.maximum if rule.maximum is not None else pd.Series(False, index=column.index)
    out_of_range = too_low | too_high
    if out_of_range.any():
        if rule.minimum is not None and rule.maximum is not None:
            bounds = f"outside {rule.minimum:g} to {rule.maximum:g}"
        else:
            bounds = f"below {rule.minimum:g}" if rule.minimum is not None else f"above {rule.maximum:g}"
        problems.append(
            f"{file}: column {rule.name!r} has {int(out_of_range.sum())} values {bounds} "
            f"({_first(out_of_range, column)})"
        )


def _check_label(file: str, frame: pd.DataFrame, label: str, problems: list[str]) -> int:
    if label not in frame.columns:
        return 0
    column = frame[label]
    values = pd.to_numeric(column, errors="coerce")
    invalid = column.isna() | ~values.isin((0, 1))
    if invalid.any():
        problems.append(
            f"{file}: label column {label!r} has {int(invalid.sum())} values that are not 0 or 1 "
            f"({_first(invalid, column)}); use 1 for the event and 0 otherwise"
        )
    return int((values == 1).sum())
