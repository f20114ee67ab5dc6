"""cellcls.scores: the per-cell score table (columns, round trips, validation, streaming writer)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cellcls.errors import ScoreTableError
from cellcls.scores import (
    SCORE_COLUMNS,
    SCORE_TABLE_COLUMNS,
    ScoreTableWriter,
    empty_score_table,
    iter_image_scores,
    read_scores,
    score_column,
    score_frame,
    score_matrix,
    write_scores,
)


def _image_frame(image_id: str, n: int, seed: int, *, key: str | None = None, first_id: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scores = rng.random((n, 19), dtype=np.float32)
    scores[0, :3] = [0.0, 1.0, np.float32(1e-8)]
    ids = np.arange(first_id, first_id + n)[::-1]  # any order
    return score_frame(image_id, ids, scores, mask_key=key or f"key-{image_id}", source="test d4")


def _table(n_images: int = 6, cells: int = 5) -> pd.DataFrame:
    return pd.concat([_image_frame(f"img{i}", cells, i) for i in range(n_images)], ignore_index=True)


def test_column_names_are_class_ids():
    assert SCORE_COLUMNS == tuple(f"p{c}" for c in range(19))
    assert SCORE_TABLE_COLUMNS[:4] == ("ID", "cell_id", "mask_key", "source")
    assert score_column(18) == "p18"
    with pytest.raises(ScoreTableError):
        score_column(19)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip_keeps_values_bit_for_bit(tmp_path, suffix):
    frame = _table()
    path = write_scores(frame, tmp_path / f"scores{suffix}")
    back = read_scores(path)
    pd.testing.assert_frame_equal(back, frame)
    np.testing.assert_array_equal(score_matrix(back).view(np.uint32), score_matrix(frame).view(np.uint32))
    assert not (tmp_path / f"scores{suffix}.partial").exists()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_streaming_writer_equals_one_shot(tmp_path, suffix):
    frames = [_image_frame(f"img{i}", 5, i) for i in range(9)]
    with ScoreTableWriter(tmp_path / f"stream{suffix}", buffer_rows=7) as writer:
        for frame in frames:
            writer.add(frame)
    assert writer.rows_written == 45
    one_shot = write_scores(pd.concat(frames, ignore_index=True), tmp_path / f"whole{suffix}")
    pd.testing.assert_frame_equal(read_scores(tmp_path / f"stream{suffix}"), read_scores(one_shot))
    if suffix == ".parquet":
        assert pq.ParquetFile(tmp_path / "stream.parquet").num_row_groups == 5  # flushed every 2 images (10 rows >= 7), then the rest
        assert pq.ParquetFile(one_shot).num_row_groups == 1


def test_add_image_and_iter_image_scores_keep_the_pairing(tmp_path):
    path = tmp_path / "s.parquet"
    scores = np.linspace(0, 1, 3 * 19, dtype=np.float32).reshape(3, 19)
    with ScoreTableWriter(path) as writer:
        writer.add_image("a", [7, 2, 5], scores, mask_key="k", source="x")
        writer.add_image("b", [], np.zeros((0, 19)), mask_key="k2", source="x")
    (image_id, ids, got, key), = list(iter_image_scores(read_scores(path)))
    assert image_id == "a" and key == "k"
    np.testing.assert_array_equal(ids, [7, 2, 5])
    np.testing.assert_array_equal(got, scores)
    with pytest.raises(ScoreTableError, match=r"scores of image 'c': row 1: column 'p3' \(class 3\) holds 2.0"):
        with ScoreTableWriter(tmp_path / "u.parquet") as writer:
            writer.add_image("c", [1, 2], np.where(np.arange(19) == 3, [[0.5], [2.0]], 0.1), mask_key="k", source="")


def test_writer_refuses_a_cell_added_twice_or_a_second_mask_key(tmp_path):
    with pytest.raises(ScoreTableError, match="'img0' cell 4 was already added"):
        with ScoreTableWriter(tmp_path / "s.parquet") as writer:
            writer.add(_image_frame("img0", 5, 0))
            writer.add(_image_frame("img0", 2, 1, first_id=3))
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "s.parquet.partial").exists()
    with pytest.raises(ScoreTableError, match="mask_key"):
        with ScoreTableWriter(tmp_path / "t.csv") as writer:
            writer.add(_image_frame("img0", 5, 0))
            writer.add(_image_frame("img0", 2, 1, key="other", first_id=10))
    assert list(tmp_path.iterdir()) == []


def _bad_csv(tmp_path, edit) -> str:
    frame = _table(n_images=2, cells=3).astype(object)
    edit(frame)
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("edit, pattern", [
    (lambda f: [f.pop("p7"), f.pop("mask_key")], r"missing columns \['mask_key', 'p7'\]"),
    (lambda f: f.__setitem__("p4", [0.1, 0.2, 1.5, 0.3, 0.2, 0.1]), r"row 2 \(line 4\): column 'p4' \(class 4\).*1\.5.*outside"),
    (lambda f: f.__setitem__("p0", [0.1, 0.2, 0.3, "", 0.2, 0.1]), r"row 3 \(line 5\): column 'p0'.*NaN"),
    (lambda f: f.__setitem__("p2", [0.1, 0.2, 0.3, 0.1, "high", 0.1]), r"row 4 .*'p2'.*not a number"),
    (lambda f: f.__setitem__("cell_id", [1, 2, 3, 1, 2, 2]), r"'img1' cell 2 appears more than once \(row 4 \(line 6\), row 5"),
    (lambda f: f.__setitem__("cell_id", [1, 2, 0, 1, 2, 3]), r"row 2 .*cell_id 0"),
    (lambda f: f.__setitem__("ID", ["a", "", "a", "b", "b", "b"]), r"row 1 .*'ID' holds '', not a non-empty string"),
    (lambda f: f.__setitem__("mask_key", ["k1", "k1", "k2", "k3", "k3", "k3"]), r"2 different mask_keys"),
])
def test_read_names_the_file_row_and_column(tmp_path, edit, pattern):
    path = _bad_csv(tmp_path, edit)
    with pytest.raises(ScoreTableError, match=pattern) as info:
        read_scores(path)
    assert path in str(info.value)


def test_bad_parquet_values_are_refused_too(tmp_path):
    frame = _table(n_images=1, cells=4)
    frame.loc[1, "p18"] = np.nan
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path, index=False)
    with pytest.raises(ScoreTableError, match=r"bad.parquet: row 1: column 'p18'"):
        read_scores(path)
    with pytest.raises(ScoreTableError, match="apply a sigmoid"):
        write_scores(frame, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_score_frame_checks_shapes_and_empty_table_round_trips(tmp_path):
    with pytest.raises(ScoreTableError, match=r"\(n_cells=2, 19\)"):
        score_frame("a", [1, 2], np.zeros((2, 18)), mask_key="k", source="")
    with pytest.raises(ScoreTableError, match="suffix"):
        write_scores(_table(1, 1), tmp_path / "s.tsv")
    path = write_scores(empty_score_table(), tmp_path / "empty.parquet")
    back = read_scores(path)
    assert list(back.columns) == list(SCORE_TABLE_COLUMNS) and len(back) == 0
    with pytest.raises(FileNotFoundError):
        read_scores(tmp_path / "none.csv")
