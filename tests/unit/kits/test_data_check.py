from pathlib import Path

import pytest

from app_custom.data.tabular import LABEL, RAW_COLUMNS
from provisioning.data_check import FLCHAIN_SCHEMA, DataCheckError, check_site_data

HEADER = "age,sex,sample.yr,kappa,lambda,flc.grp,creatinine,mgus,death"
TRAIN = [
    "97.0,F,1997,5.7,4.86,10,1.7,no,1",
    "92.0,F,2000,0.87,0.683,1,0.9,no,0",
    "61.0,M,1996,1.2,1.1,5,,yes,0",
    "70.0,M,1998,1.5,1.9,7,1.1,no,1",
    "55.0,F,1995,0.9,1.0,3,0.8,no,0",
]
TEST = ["80.0,M,1997,2.1,2.3,8,1.2,no,1", "58.0,F,1999,0.7,0.9,2,,no,0"]


def write_data(folder: Path, train: list[str] = TRAIN, test: list[str] = TEST, header: str = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("\n".join([header, *train]) + "\n", encoding="utf-8")
    (folder / "test.csv").write_text("\n".join([header, *test]) + "\n", encoding="utf-8")
    return folder


def problems_of(folder: Path) -> str:
    with pytest.raises(DataCheckError) as excinfo:
        check_site_data(folder)
    return str(excinfo.value)


def test_schema_matches_training_code():
    assert tuple(rule.name for rule in FLCHAIN_SCHEMA.columns) == RAW_COLUMNS
    assert FLCHAIN_SCHEMA.label == LABEL


def test_valid_data_summarized(tmp_path):
    report = check_site_data(write_data(tmp_path))
    train, test = report.splits
    assert (train.split, train.rows, train.positives) == ("train", 5, 2)
    assert (test.rows, test.positives) == (2, 1)
    assert train.missing["creatinine"] == 1
    assert train.missing["age"] == 0
    assert report.warnings == []


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        (
            "97.0,male,1997,5.7,4.86,10,1.7,no,1",
            "train.csv: column 'sex' has unexpected values ['male'] (first at line 2",
        ),
        (
            "97.0,F,1997,abc,4.86,10,1.7,no,1",
            "train.csv: column 'kappa' has 1 non-numeric values (first at line 2: 'abc')",
        ),
        (",F,1997,5.7,4.86,10,1.7,no,1", "train.csv: column 'age' has 1 missing values (first at line 2)"),
        ("97.0,F,1997,-5.7,4.86,10,1.7,no,1", "train.csv: column 'kappa' has 1 values below 0"),
        ("97.0,F,1997,5.7,4.86,11,1.7,no,1", "train.csv: column 'flc.grp' has 1 values outside 1 to 10"),
        ("197.0,F,1997,5.7,4.86,10,1.7,no,1", "column 'age' has 1 values outside 0 to 120"),
        ("97.0,F,1997,5.7,4.86,10,1.7,maybe,1", "column 'mgus' has unexpected values ['maybe']"),
        (
            "97.0,F,1997,5.7,4.86,10,1.7,no,2",
            "label column 'death' has 1 values that are not 0 or 1 (first at line 2: '2')",
        ),
        ("97.0,F,1997,5.7,4.86,10,1.7,no,", "label column 'death' has 1 values that are not 0 or 1"),
    ],
)
def test_bad_value_named(tmp_path, row, fragment):
    message = problems_of(write_data(tmp_path, train=[row, *TRAIN[1:]]))
    assert fragment in message


def test_every_problem_listed(tmp_path):
    bad_train = ["97.0,male,1997,5.7,4.86,10,1.7,no,1", *TRAIN[1:]]
    bad_test = ["80.0,M,1997,2.1,2.3,8,1.2,no,5", TEST[1]]
    message = problems_of(write_data(tmp_path, train=bad_train, test=bad_test))
    assert "has 2 problem(s)" in message
    assert "train.csv: column 'sex'" in message
    assert "test.csv: label column 'death'" in message


def drop_mgus(row: str) -> str:
    fields = row.split(",")
    return ",".join(fields[:7] + fields[8:])


def test_missing_column_named(tmp_path):
    header = HEADER.replace(",mgus", "")
    message = problems_of(write_data(tmp_path, [drop_mgus(r) for r in TRAIN], [drop_mgus(r) for r in TEST], header))
    assert "train.csv: missing columns ['mgus']" in message
    assert "test.csv: missing columns ['mgus']" in message


def test_row_longer_than_header(tmp_path):
    message = problems_of(write_data(tmp_path, train=[f"{TRAIN[0]},extra", *TRAIN[1:]]))
    assert "train.csv: some rows have more fields than the header" in message


def test_missing_file_named(tmp_path):
    write_data(tmp_path)
    (tmp_path / "test.csv").unlink()
    assert f"test.csv: file not found in {tmp_path}" in problems_of(tmp_path)


def test_missing_folder(tmp_path):
    assert "data folder" in problems_of(tmp_path / "absent")


def test_header_only_file(tmp_path):
    write_data(tmp_path, train=[])
    assert "train.csv: has a header but no rows" in problems_of(tmp_path)


def test_unreadable_csv(tmp_path):
    write_data(tmp_path)
    (tmp_path / "train.csv").write_bytes(b'age,sex\n"97,F\n')
    assert "train.csv: not a readable CSV file" in problems_of(tmp_path)


def test_single_class_warned(tmp_path):
    report = check_site_data(write_data(tmp_path, test=[TEST[1]]))
    assert any("test.csv: every row has death=0" in warning for warning in report.warnings)


def test_extra_columns_warned(tmp_path):
    rows = [f"{row},x" for row in TRAIN]
    report = check_site_data(
        write_data(tmp_path, train=rows, test=[f"{r},x" for r in TEST], header=f"{HEADER},chapter")
    )
    assert any("columns ['chapter'] are not used by training" in warning for warning in report.warnings)
    assert any("describe the outcome" in warning for warning in report.warnings)
