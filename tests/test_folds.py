"""Multi-label stratified folds and the ``cellcls folds`` command."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellcls.cli import main
from cellcls.errors import CellclsError
from cellcls.folds import fold_class_counts, group_codes, make_folds


def _targets(n=300, seed=0):
    """HPA-like multi-hot labels: skewed class frequencies, 1-3 labels per image."""
    rng = np.random.default_rng(seed)
    freq = np.linspace(3.0, 0.05, 19) ** 2
    y = np.zeros((n, 19), np.uint8)
    for i in range(n):
        y[i, rng.choice(19, size=rng.integers(1, 4), replace=False, p=freq / freq.sum())] = 1
    return y


def test_folds_cover_0_to_k_minus_1_with_balanced_sizes():
    folds = make_folds(_targets(), k=5, seed=0)
    assert folds.shape == (300,) and folds.dtype == np.int64
    sizes = np.bincount(folds, minlength=5)
    # iterative stratification balances labels first, so sizes drift a little
    assert set(np.unique(folds)) == set(range(5)) and np.abs(sizes - 60).max() <= 10


def test_same_seed_same_folds_other_seed_other_folds():
    y = _targets()
    np.testing.assert_array_equal(make_folds(y, k=5, seed=3), make_folds(y, k=5, seed=3))
    assert (make_folds(y, k=5, seed=3) != make_folds(y, k=5, seed=4)).any()


def test_every_class_with_k_images_is_in_every_fold():
    y = _targets()
    k = 5
    counts = fold_class_counts(y, make_folds(y, k=k, seed=1))
    totals = y.sum(axis=0)
    assert counts.shape == (k, 19)
    np.testing.assert_array_equal(counts.sum(axis=0), totals)
    for c in np.flatnonzero(totals >= k):
        assert (counts[:, c] > 0).all(), f"class {c} ({totals[c]} images) missing from a fold"
        # stratified: each fold near its share
        assert np.abs(counts[:, c] - totals[c] / k).max() <= max(3.0, 0.2 * totals[c] / k)


def test_groups_never_straddle_folds_and_missing_groups_are_singletons():
    y = _targets(200, seed=2)
    rng = np.random.default_rng(0)
    groups = [f"g{g}" for g in rng.integers(0, 60, 200)]
    groups[:10] = [None] * 5 + [""] * 5
    folds = make_folds(y, k=4, seed=0, groups=groups)
    frame = pd.DataFrame({"g": groups, "fold": folds})
    named = frame[frame["g"].fillna("").str.len() > 0]
    assert (named.groupby("g")["fold"].nunique() == 1).all()
    assert len(set(folds[:10])) > 1  # ten singleton groups spread over folds
    codes = group_codes(groups)
    assert len(set(codes[:10])) == 10


def test_too_few_samples_or_groups_is_an_error():
    y = _targets(10)
    with pytest.raises(CellclsError, match="5 folds from 3 groups"):
        make_folds(y, k=5, groups=["a", "b", "c"] * 3 + ["a"])
    with pytest.raises(ValueError):
        make_folds(y[:, 0], k=2)


def test_folds_command_writes_csv_and_prints_table(tmp_path, capsys):
    y = _targets(120, seed=5)
    labels = ["|".join(str(c) for c in np.flatnonzero(row)) for row in y]
    groups = [f"g{i // 3}" for i in range(120)]
    pd.DataFrame({"ID": [f"id{i}" for i in range(120)], "Label": labels, "grp": groups}).to_csv(
        tmp_path / "train.csv", index=False
    )
    out = tmp_path / "folds.csv"
    argv = ["folds", "--labels", str(tmp_path / "train.csv"), "--k", "3", "--seed", "0", "--out", str(out),
            "--group-col", "grp", "-q"]
    assert main(argv) == 0
    written = pd.read_csv(out)
    assert list(written.columns) == ["ID", "fold", "grp"] and len(written) == 120
    assert (written.groupby("grp")["fold"].nunique() == 1).all()
    printed = capsys.readouterr().out
    table = [line.split() for line in printed.splitlines() if line.split() and line.split()[0] in
             {"fold", "0", "1", "2", "total"}]
    assert table[0][:3] == ["fold", "images", "0"] and table[0][-1] == "18"
    assert table[-1][0] == "total" and int(table[-1][1]) == 120
    assert [int(v) for v in table[-1][2:]] == y.sum(axis=0).tolist()
    # bad group column: a clean error, exit code 1
    assert main(argv[:-3] + ["--group-col", "nope"]) == 1
    assert "no column 'nope'" in capsys.readouterr().err
