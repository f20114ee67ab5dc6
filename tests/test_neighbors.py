"""Embeddings, exact cosine top-k, label transfer and embedding duplicates (issue 12), and their commands."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cellcls.cli import main
from cellcls.embeddings import (
    Embeddings,
    check_same_dimension,
    l2_normalise,
    read_embeddings,
    tta_mean_embedding,
    write_embeddings,
)
from cellcls.errors import EmbeddingError, ParameterError, RegistryError
from cellcls.neighbors import (
    LABEL_TRANSFER_THRESHOLD,
    cosine_topk,
    embedding_duplicates,
    transfer_labels,
)


# --------------------------------------------------------------------------- helpers
def _reference(query, index, k, *, exclude_self=False):
    """Brute force in float64: full similarity matrix, stable sort (lower index first among ties)."""
    q = np.asarray(query, np.float64)
    m = np.asarray(index, np.float64)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (m / np.linalg.norm(m, axis=1, keepdims=True)).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def _tied(rng, n, d=16, nonzero=4):
    """Rows with exactly 4 entries of +-1: norm 2, so normalised entries are +-0.5 and every cosine is a
    multiple of 1/4, computed exactly in float32 whatever the summation order: many exact ties."""
    x = np.zeros((n, d), np.float32)
    for row in x:
        row[rng.choice(d, nonzero, replace=False)] = rng.choice([-1.0, 1.0], nonzero)
    return x


# --------------------------------------------------------------------------- cosine_topk
@pytest.mark.parametrize("q, m, k, chunk_rows, index_chunk_rows", [
    (203, 157, 5, 17, 23),     # chunks divide neither Q nor M
    (64, 300, 1, 64, 300),     # one block
    (50, 40, 7, 1, 3),         # one query row per chunk, tiny index chunks (smaller than k)
])
def test_topk_matches_brute_force(q, m, k, chunk_rows, index_chunk_rows):
    rng = np.random.default_rng(0)
    query, index = rng.normal(size=(q, 32)), rng.normal(size=(m, 32)) * 3.0  # any norm is fine
    sims, idx = cosine_topk(query, index, k=k, chunk_rows=chunk_rows, index_chunk_rows=index_chunk_rows,
                            progress=False)
    ref_sims, ref_idx = _reference(query, index, k)
    assert sims.dtype == np.float32 and idx.dtype == np.int64 and sims.shape == idx.shape == (q, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


@pytest.mark.parametrize("chunk_rows, index_chunk_rows", [(2048, 16384), (7, 11), (5, 1), (1, 9), (33, 64)])
def test_ties_go_to_the_lower_index_whatever_the_chunks(chunk_rows, index_chunk_rows):
    rng = np.random.default_rng(1)
    query, index = _tied(rng, 60), _tied(rng, 130)
    k = 6
    ref_sims, ref_idx = _reference(query, index, k)
    # the data must really tie across the k-th place, or the test proves nothing
    full, _ = _reference(query, index, index.shape[0])
    assert (full[:, k] == full[:, k - 1]).mean() > 0.5
    sims, idx = cosine_topk(query, index, k=k, chunk_rows=chunk_rows, index_chunk_rows=index_chunk_rows,
                            progress=False)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sims, ref_sims.astype(np.float32))


def test_k_equal_to_m_returns_every_row_sorted_and_k_above_m_is_an_error():
    rng = np.random.default_rng(2)
    query, index = _tied(rng, 9), _tied(rng, 12)
    sims, idx = cosine_topk(query, index, k=12, index_chunk_rows=5, progress=False)
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.tile(np.arange(12), (9, 1)))
    np.testing.assert_array_equal(idx, _reference(query, index, 12)[1])
    with pytest.raises(ParameterError, match="k=13 but the index has only 12 rows"):
        cosine_topk(query, index, k=13, progress=False)
    with pytest.raises(ParameterError, match="k must be an integer >= 1"):
        cosine_topk(query, index, k=0, progress=False)


def test_float16_input_is_searched_in_float32():
    rng = np.random.default_rng(3)
    query = rng.normal(size=(40, 24)).astype(np.float16)
    index = rng.normal(size=(90, 24)).astype(np.float16)
    sims, idx = cosine_topk(query, index, k=4, chunk_rows=13, index_chunk_rows=31, progress=False)
    ref_sims, ref_idx = _reference(query, index, 4)  # the float16 values, upcast
    assert sims.dtype == np.float32
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


@pytest.mark.parametrize("chunk_rows, index_chunk_rows", [(2048, 16384), (7, 5), (10, 25)])
def test_exclude_self_drops_only_the_row_itself(chunk_rows, index_chunk_rows):
    rng = np.random.default_rng(4)
    x = _tied(rng, 50)
    x[10] = x[3]  # an exact duplicate must still be found
    k = 5
    sims, idx = cosine_topk(x, x, k=k, exclude_self=True, chunk_rows=chunk_rows, index_chunk_rows=index_chunk_rows,
                            progress=False)
    assert not (idx == np.arange(50)[:, None]).any()
    assert idx[3, 0] == 10 and idx[10, 0] == 3 and sims[3, 0] == pytest.approx(1.0)
    np.testing.assert_array_equal(idx, _reference(x, x, k, exclude_self=True)[1])
    cosine_topk(x, x, k=49, exclude_self=True, progress=False)
    with pytest.raises(ParameterError, match="only 49 other rows"):
        cosine_topk(x, x, k=50, exclude_self=True, progress=False)
    with pytest.raises(ParameterError, match="exclude_self needs the query to be the index"):
        cosine_topk(x[:20], x, k=2, exclude_self=True, progress=False)


def test_inputs_are_not_modified_and_bad_inputs_are_named():
    rng = np.random.default_rng(5)
    query, index = rng.normal(size=(10, 8)), rng.normal(size=(20, 8))
    q0, i0 = query.copy(), index.copy()
    cosine_topk(query, index, k=3, progress=False)
    np.testing.assert_array_equal(query, q0)
    np.testing.assert_array_equal(index, i0)
    bad = query.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ParameterError, match="query row 7 holds NaN"):
        cosine_topk(bad, index, k=3, progress=False)
    zero = index.copy()
    zero[4] = 0
    with pytest.raises(ParameterError, match="index row 4 is all zeros"):
        cosine_topk(query, zero, k=3, progress=False)
    with pytest.raises(ParameterError, match="8-d rows but index has 9-d"):
        cosine_topk(query, rng.normal(size=(20, 9)), k=3, progress=False)
    with pytest.raises(RegistryError, match="choose one of: faiss, torch"):
        cosine_topk(query, index, k=3, backend="annoy", progress=False)


def test_faiss_backend_gives_the_same_neighbours():
    pytest.importorskip("faiss", reason="faiss is not installed here; the faiss backend is tested where it is")
    rng = np.random.default_rng(6)
    query, index = rng.normal(size=(120, 32)), rng.normal(size=(300, 32))
    want = cosine_topk(query, index, k=5, progress=False)
    got = cosine_topk(query, index, k=5, backend="faiss", chunk_rows=50, progress=False)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    want_self = cosine_topk(index, index, k=4, exclude_self=True, progress=False)
    got_self = cosine_topk(index, index, k=4, exclude_self=True, backend="faiss", progress=False)
    np.testing.assert_array_equal(got_self[1], want_self[1])


# --------------------------------------------------------------------------- embeddings
def test_l2_normalise_and_tta_mean():
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    unit = l2_normalise(x)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-6)
    np.testing.assert_array_equal(x, [[3.0, 4.0], [0.0, -2.0]])
    with pytest.raises(ParameterError, match="row 1 is all zeros"):
        l2_normalise(np.array([[1.0, 0.0], [0.0, 0.0]]))
    # each view is normalised before the mean: a long view does not outweigh a short one
    mean = tta_mean_embedding([np.array([[10.0, 0.0]]), np.array([[0.0, 0.5]])])
    np.testing.assert_allclose(mean, [[2 ** -0.5, 2 ** -0.5]], rtol=1e-6)
    with pytest.raises(ParameterError, match="view 1 has shape"):
        tta_mean_embedding([np.ones((2, 3)), np.ones((3, 3))])
    with pytest.raises(ParameterError, match="at least one view"):
        tta_mean_embedding([])


def test_embeddings_file_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    emb = l2_normalise(rng.normal(size=(6, 10)))
    labels = (rng.random((6, 19)) > 0.8).astype(np.float32)
    path = write_embeddings(tmp_path / "sub" / "emb.npz", [f"img{i}" for i in range(6)], emb, labels)
    back = read_embeddings(path)
    assert list(back.ids) == [f"img{i}" for i in range(6)] and back.dim == 10 and len(back) == 6
    np.testing.assert_array_equal(back.embeddings, emb)
    np.testing.assert_array_equal(back.labels, labels)
    assert read_embeddings(write_embeddings(tmp_path / "plain.npz", ["a"], emb[:1])).labels is None
    with np.load(path, allow_pickle=False) as archive:  # plain arrays, no pickles
        assert archive["ids"].dtype.kind == "U" and archive["embeddings"].dtype == np.float32


def _save_raw(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    (dict(ids=np.array(["a", "b", "c"]), embeddings=np.eye(2, dtype=np.float32)), "3 ids but 2 embedding rows"),
    (dict(ids=np.array(["a", "b"]), embeddings=np.array([[1, 0], [np.nan, 0]], np.float32)),
     r"row 1 \(ID 'b'\) holds NaN"),
    (dict(ids=np.array(["a", "b"]), embeddings=np.array([[1, 0], [0, 2]], np.float32)),
     r"row 1 \(ID 'b'\) has norm 2.*L2-normalised"),
    (dict(ids=np.array(["a", "a"]), embeddings=np.eye(2, dtype=np.float32)), "ID 'a' appears 2 times"),
    (dict(ids=np.array(["a", "b"]), embeddings=np.eye(2, dtype=np.float32), labels=np.zeros((2, 18))),
     r"labels must have shape \(2, 19\)"),
    (dict(vectors=np.eye(2, dtype=np.float32)), "has no array 'ids'"),
])
def test_bad_embeddings_files_are_named(tmp_path, arrays, message):
    path = _save_raw(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EmbeddingError, match=message) as info:
        read_embeddings(path)
    assert str(path) in str(info.value)


def test_dimension_mismatch_names_both_files():
    a = Embeddings(np.array(["x"]), np.ones((1, 4), np.float32) / 2, path="a.npz")
    b = Embeddings(np.array(["y"]), np.ones((1, 9), np.float32) / 3, path="b.npz")
    with pytest.raises(EmbeddingError, match="a.npz has 4-d embeddings but b.npz has 9-d"):
        check_same_dimension(a, b)


def test_write_refuses_unnormalised_rows(tmp_path):
    with pytest.raises(EmbeddingError, match="l2_normalise"):
        write_embeddings(tmp_path / "e.npz", ["a"], np.array([[3.0, 4.0]]))
    assert not (tmp_path / "e.npz").exists()


# --------------------------------------------------------------------------- transfer_labels
def _transfer_inputs(rng, q=8, k=3):
    scores = rng.random((q, 19)).astype(np.float32)
    labels = (rng.random((q, k, 19)) > 0.7).astype(np.float32)
    return scores, labels


def test_transfer_leaves_rows_below_the_threshold_bit_identical():
    rng = np.random.default_rng(8)
    scores, labels = _transfer_inputs(rng)
    sims = np.full((8, 3), 0.2)
    sims[[1, 5], 0] = 0.9
    original = scores.copy()
    out, touched = transfer_labels(scores, sims, labels)
    np.testing.assert_array_equal(touched, np.isin(np.arange(8), [1, 5]))
    untouched = ~touched
    assert out.dtype == scores.dtype and out[untouched].tobytes() == original[untouched].tobytes()
    np.testing.assert_array_equal(out[[1, 5]], labels[[1, 5], 0])  # default: replaced, as in 2019
    np.testing.assert_array_equal(scores, original)  # input not modified


def test_transfer_rules_and_the_nearest_column():
    rng = np.random.default_rng(9)
    scores, labels = _transfer_inputs(rng, q=2)
    sims = np.array([[0.1, 0.8, 0.3], [0.7, 0.66, 0.0]])  # row 0: the nearest is column 1
    mean, _ = transfer_labels(scores, sims, labels, weight=0.3, rule="mean")
    np.testing.assert_allclose(mean[0], 0.7 * scores[0] + 0.3 * labels[0, 1], rtol=1e-6)
    np.testing.assert_allclose(mean[1], 0.7 * scores[1] + 0.3 * labels[1, 0], rtol=1e-6)
    top, _ = transfer_labels(scores, sims, labels, weight=0.5, rule="max")
    np.testing.assert_allclose(top, np.maximum(scores, 0.5 * labels[[0, 1], [1, 0]]), rtol=1e-6)
    with pytest.raises(RegistryError, match="choose one of: max, mean"):
        transfer_labels(scores, sims, labels, rule="median")
    with pytest.raises(ParameterError, match="weight must be in"):
        transfer_labels(scores, sims, labels, weight=1.5)


def test_transfer_threshold_is_inclusive_and_logged(caplog):
    rng = np.random.default_rng(10)
    scores, labels = _transfer_inputs(rng, q=2, k=1)
    at = LABEL_TRANSFER_THRESHOLD
    assert at == 0.65
    sims = np.array([[at], [np.nextafter(at, 0.0)]])
    with caplog.at_level(logging.INFO, logger="cellcls.neighbors"):
        out, touched = transfer_labels(scores, sims, labels)
    np.testing.assert_array_equal(touched, [True, False])
    np.testing.assert_array_equal(out[1], scores[1])
    assert "1 of 2 images" in caplog.text


# --------------------------------------------------------------------------- duplicates
def test_embedding_duplicates_finds_planted_pairs_only():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(200, 64))
    x[150] = x[7] + rng.normal(scale=0.05, size=64)   # near copies (cosine ~0.999)
    x[151] = x[7] + rng.normal(scale=0.05, size=64)   # a triplet 7-150-151
    x[180] = -x[20] + 0 * x[20]                       # opposite direction: not a duplicate
    x[190] = x[42] * 7.0                              # same direction, other scale: a duplicate
    ids = np.array([f"img{i:03d}" for i in range(200)])
    pairs = embedding_duplicates(ids, x, progress=False)
    assert list(pairs.columns) == ["id_a", "id_b", "similarity"]
    got = set(zip(pairs["id_a"], pairs["id_b"]))
    assert got == {("img007", "img150"), ("img007", "img151"), ("img150", "img151"), ("img042", "img190")}
    assert (pairs["similarity"] >= 0.95).all()
    none = embedding_duplicates(ids[:1], x[:1], progress=False)
    assert none.empty and list(none.columns) == ["id_a", "id_b", "similarity"]


# --------------------------------------------------------------------------- commands
@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(12)
    test = l2_normalise(rng.normal(size=(15, 64)))
    train = l2_normalise(rng.normal(size=(40, 64)))
    train[33] = l2_normalise(test[2:3] + rng.normal(scale=0.01, size=(1, 64)))[0]  # a near copy
    q = write_embeddings(tmp_path / "test.npz", [f"t{i}" for i in range(15)], test)
    m = write_embeddings(tmp_path / "train.npz", [f"r{i}" for i in range(40)], train,
                         labels=(rng.random((40, 19)) > 0.8).astype(np.float32))
    return tmp_path, q, m, test, train


def test_neighbors_command_writes_every_rank(files, capsys):
    tmp, q, m, test, train = files
    out = tmp / "nn.csv"
    assert main(["neighbors", "--query", str(q), "--index", str(m), "--k", "3", "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["query_id", "rank", "index_id", "similarity"]
    assert len(table) == 45 and list(table["rank"][:3]) == [1, 2, 3]
    sims, idx = cosine_topk(test, train, k=3, progress=False)
    assert list(table["index_id"]) == [f"r{j}" for j in idx.ravel()]
    np.testing.assert_allclose(table["similarity"], sims.ravel(), atol=1e-6)
    assert table.loc[table["query_id"] == "t2", "index_id"].iloc[0] == "r33"
    assert "1 of 15 queries at >= 0.65" in capsys.readouterr().out


def test_neighbors_command_exclude_self_and_errors(files, tmp_path, capsys):
    tmp, q, m, test, train = files
    out = tmp / "self.csv"
    assert main(["neighbors", "--query", str(m), "--index", str(m), "--k", "2", "--exclude-self", "--out", str(out),
                 "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert not (table["query_id"] == table["index_id"]).any()
    assert main(["neighbors", "--query", str(q), "--index", str(m), "--exclude-self", "--out", str(out)]) == 1
    assert "same IDs in the same order" in capsys.readouterr().err
    other = write_embeddings(tmp_path / "other.npz", ["z"], np.ones((1, 8), np.float32) / 8 ** 0.5)
    assert main(["neighbors", "--query", str(q), "--index", str(other), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(q) in err and str(other) in err and "64-d" in err and "8-d" in err
    assert main(["neighbors", "--query", str(q), "--index", str(m), "--k", "41", "--out", str(out)]) == 1
    assert "k=41" in capsys.readouterr().err


def test_dedup_embeddings_command_matches_dedup_columns(files, capsys):
    tmp, q, m, test, train = files
    out, pairs_out = tmp / "dups.csv", tmp / "pairs.csv"
    assert main(["dedup-embeddings", "--embeddings", str(q), str(m), "--out", str(out), "--pairs", str(pairs_out),
                 "--threshold", "0.99", "--no-progress"]) == 0
    dups = pd.read_csv(out)
    assert list(dups.columns) == ["group", "ID", "folder"]  # as 'cellcls dedup' writes
    assert set(zip(dups["ID"], dups["folder"])) == {("t2", str(q)), ("r33", str(m))}
    assert dups["group"].nunique() == 1
    pairs = pd.read_csv(pairs_out)
    assert list(pairs.columns) == ["id_a", "id_b", "similarity"] and len(pairs) == 1
    assert "1 pairs, 1 duplicate groups" in capsys.readouterr().out
    assert main(["dedup-embeddings", "--embeddings", str(q), str(q), "--out", str(out)]) == 1
    assert "appears in more than one file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["neighbors", "dedup-embeddings"])
def test_commands_are_installed_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"cellcls {name} --" in capsys.readouterr().out.split("example:")[1]
