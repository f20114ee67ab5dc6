"""Label files: train.csv parsing with row-precise errors, the public-HPA TSV, writing."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from cellcls.errors import BadLabelRowError, LabelError
from cellcls.labels import (
    LabelTable,
    hpa_image_id,
    parse_label_string,
    read_hpa_public_tsv,
    read_train_csv,
    write_labels_csv,
)


def test_parse_label_string_sorts_and_accepts_spaces():
    assert parse_label_string("8|5|0") == (0, 5, 8)
    assert parse_label_string(" 16 0 ") == (0, 16)
    assert parse_label_string("18") == (18,)
    assert parse_label_string("3|3") == (3,)


@pytest.mark.parametrize(
    "text,reason",
    [("", "empty label"), ("  ", "empty label"), ("19", "outside 0..18"), ("-1", "outside 0..18"),
     ("1|x", "not an integer"), ("1.5", "not an integer")],
)
def test_parse_label_string_rejects_with_reason_and_row(text, reason):
    with pytest.raises(BadLabelRowError, match=reason) as info:
        parse_label_string(text, row=7)
    assert "line 7" in str(info.value)


def _write(path, text):
    path.write_text(text)
    return path


def test_read_train_csv_builds_multi_hot_and_keeps_extra_columns(tmp_path):
    path = _write(tmp_path / "train.csv", "ID,Label,group\nA,8|5|0,g1\nB,16,g1\nC,18,\n")
    table = read_train_csv(path)
    assert table.ids == ("A", "B", "C") and len(table) == 3
    assert table.targets.dtype == np.uint8 and table.targets.shape == (3, 19)
    assert table.labels(0) == (0, 5, 8) and table.labels(2) == (18,)
    assert table.extra["group"].tolist() == ["g1", "g1", ""]
    counts = table.class_counts()
    assert counts[0] == 1 and counts[16] == 1 and counts.sum() == 5
    with pytest.raises(ValueError):
        table.targets[0, 0] = 0  # read-only: a table cannot be changed behind its back


@pytest.mark.parametrize(
    "rows,line,reason",
    [
        ("A,1\nB,19\n", 3, "outside 0..18"),
        ("A,1\nB,two\n", 3, "not an integer"),
        ("A,1\nB,\n", 3, "empty label"),
        ("A,1\n,4\n", 3, "empty ID"),
        ("A,1\nB,2\nA,3\n", 4, "duplicate ID 'A', first seen on line 2"),
    ],
)
def test_read_train_csv_names_file_line_and_reason(tmp_path, rows, line, reason):
    path = _write(tmp_path / "bad.csv", "ID,Label\n" + rows)
    with pytest.raises(BadLabelRowError) as info:
        read_train_csv(path)
    message = str(info.value)
    assert str(path) in message
    assert f"line {line} (data row {line - 1})" in message
    assert reason in message


def test_read_train_csv_file_level_errors(tmp_path):
    with pytest.raises(LabelError, match="does not exist"):
        read_train_csv(tmp_path / "missing.csv")
    with pytest.raises(LabelError, match="missing column"):
        read_train_csv(_write(tmp_path / "cols.csv", "Id,Labels\nA,1\n"))
    with pytest.raises(LabelError, match="no data rows"):
        read_train_csv(_write(tmp_path / "empty.csv", "ID,Label\n"))


def test_ids_are_kept_as_text(tmp_path):
    table = read_train_csv(_write(tmp_path / "t.csv", "ID,Label\n0012,1\nNA,2\n"))
    assert table.ids == ("0012", "NA")


def test_write_then_read_round_trip(tmp_path):
    path = _write(tmp_path / "train.csv", "ID,Label,Cellline\nA,8|5|0,U-2 OS\nB,16,A-431\n")
    table = read_train_csv(path)
    write_labels_csv(table, tmp_path / "out" / "copy.csv")
    again = read_train_csv(tmp_path / "out" / "copy.csv")
    assert again.ids == table.ids
    np.testing.assert_array_equal(again.targets, table.targets)
    assert again.extra.equals(table.extra)
    assert (tmp_path / "out" / "copy.csv").read_text().splitlines()[1] == "A,0|5|8,U-2 OS"


def test_write_refuses_images_without_labels(tmp_path):
    table = LabelTable(ids=("A",), targets=np.zeros((1, 19), np.uint8))
    with pytest.raises(LabelError, match="'A'"):
        write_labels_csv(table, tmp_path / "x.csv")


def test_subset_keeps_rows_aligned(tmp_path):
    table = read_train_csv(_write(tmp_path / "t.csv", "ID,Label,g\nA,1,x\nB,2,y\nC,3,z\n"))
    sub = table.subset([2, 0])
    assert sub.ids == ("C", "A") and sub.labels(0) == (3,) and sub.extra["g"].tolist() == ["z", "x"]
    assert table.subset(np.array([False, True, False])).ids == ("B",)


# --------------------------------------------------------------------------- kaggle_2021.tsv
TSV = (
    "Image\tLabel\tLabel_idx\tCellline\tin_trainset\n"
    "https://images.proteinatlas.org/10005/921_B9_1\tNucleoplasm,Cytosol\t0|16\tU-2 OS\tFalse\n"
    "https://images.proteinatlas.org/10005/921_B9_2\tNucleoplasm\t0\tA-431\tTrue\n"
    "https://images.proteinatlas.org/10006/1001_C1_1\tSomething else\t\tU-2 OS\tFalse\n"
    "https://images.proteinatlas.org/10007/77_A1_3\tBad\t0|25\tU-2 OS\tFalse\n"
    "https://images.proteinatlas.org/10008/5_D4_1\tGolgi apparatus\t7\tHeLa\tFalse\n"
    "https://images.proteinatlas.org/10005/921_B9_1\tNucleoplasm\t0\tU-2 OS\tFalse\n"
)


def test_hpa_image_id_from_url():
    assert hpa_image_id("https://images.proteinatlas.org/10005/921_B9_1") == "10005_921_B9_1"
    assert hpa_image_id("https://images.proteinatlas.org/10005/921_B9_1/") == "10005_921_B9_1"


def test_read_hpa_public_tsv_filters_and_logs_reasons(tmp_path, caplog):
    path = _write(tmp_path / "kaggle_2021.tsv", TSV)
    with caplog.at_level(logging.INFO, logger="cellcls.labels"):
        table = read_hpa_public_tsv(path)
    assert table.ids == ("10005_921_B9_1", "10008_5_D4_1")
    assert table.labels(0) == (0, 16) and table.labels(1) == (7,)
    assert table.extra["Cellline"].tolist() == ["U-2 OS", "HeLa"]
    assert table.extra["in_trainset"].tolist() == [False, False]
    for reason in ("1 in train set", "1 no label", "1 invalid label", "1 duplicate ID"):
        assert reason in caplog.text
    assert "kept 2 of 6 rows" in caplog.text


def test_read_hpa_public_tsv_options(tmp_path, caplog):
    path = _write(tmp_path / "kaggle_2021.tsv", TSV)
    table = read_hpa_public_tsv(path, keep_in_trainset=True)
    assert table.ids == ("10005_921_B9_1", "10005_921_B9_2", "10008_5_D4_1")
    assert table.extra["in_trainset"].tolist() == [False, True, False]
    with caplog.at_level(logging.WARNING):
        only = read_hpa_public_tsv(path, cell_lines=["HeLa", "MCF7"])
    assert only.ids == ("10008_5_D4_1",)
    assert "MCF7" in caplog.text


def test_read_hpa_public_tsv_wrong_columns(tmp_path):
    with pytest.raises(LabelError, match="kaggle_2021.tsv"):
        read_hpa_public_tsv(_write(tmp_path / "x.tsv", "ID\tLabel\nA\t1\n"))


def test_excel_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffID,Label\nA,1\n".encode("utf-8"))
    assert read_train_csv(path).ids == ("A",)
