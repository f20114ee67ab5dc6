"""Exact cosine nearest neighbours between embeddings, label transfer from them, and duplicates.

The 2019 HPA winner trained an ArcFace embedding network on antibody ids, searched each test image's
most similar labelled image, and where the similarity passed 0.65 replaced the test image's predicted
labels with that image's labels (2019 also standardised each embedding dimension over each set before
the cosine; here the cosine is taken of the embeddings as given). This module holds the pure parts:

:func:`cosine_topk`
    Exact top-k cosine similarity of every query row against every index row, in blocks (memory does
    not grow with Q x M). Backends (registry :data:`NEIGHBOUR_BACKENDS`): ``"torch"`` (always) and
    ``"faiss"`` (``IndexFlatIP``, exact, when the ``faiss`` package is installed).
:func:`transfer_labels`
    Blend the labels of a test image's nearest labelled image into its image-level scores when the
    similarity reaches a threshold.
:func:`embedding_duplicates`
    Near-duplicate pairs of one embedding set (self-search), the embedding companion of
    :mod:`cellcls.dedup`'s hash search.

Conventions: inputs are L2-normalised inside (any norm is accepted; a zero row is an error), so the
similarity is the cosine, in [-1, 1]; arithmetic is float32 (float16/float64 input is cast).
Results are sorted best first; among equal similarities the LOWER index row comes first, both in
the order of a row's results and in which rows are kept when ties straddle the k-th place.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from .embeddings import _row_norms, _unit_rows, l2_normalise
from .errors import ParameterError
from .registry import Registry

__all__ = [
    "LABEL_TRANSFER_THRESHOLD",
    "DUPLICATE_THRESHOLD",
    "NEIGHBOUR_BACKENDS",
    "TRANSFER_RULES",
    "cosine_topk",
    "transfer_labels",
    "embedding_duplicates",
]

log = logging.getLogger(__name__)

#: Cosine similarity from which a labelled neighbour's labels are transferred (2019: 0.65).
LABEL_TRANSFER_THRESHOLD = 0.65
#: Starting point for embedding duplicates; NOT tuned: check it on real data (look at pairs just above
#: and below it) before trusting it.
DUPLICATE_THRESHOLD = 0.95

Backend = Callable[..., "tuple[np.ndarray, np.ndarray]"]
NEIGHBOUR_BACKENDS: Registry[Backend] = Registry("neighbour backend")


# --------------------------------------------------------------------------- checks
def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ParameterError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    return x


def _check_topk_args(query: np.ndarray, index: np.ndarray, k: int, exclude_self: bool,
                     chunk_rows: int, index_chunk_rows: int) -> None:
    if query.shape[1] != index.shape[1]:
        raise ParameterError(f"query has {query.shape[1]}-d rows but index has {index.shape[1]}-d rows; they must match")
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ParameterError(f"k must be an integer >= 1, got {k!r}")
    if exclude_self and query.shape[0] != index.shape[0]:
        raise ParameterError(f"exclude_self needs the query to be the index (same rows), got {query.shape[0]} "
                             f"query rows and {index.shape[0]} index rows")
    available = index.shape[0] - (1 if exclude_self else 0)
    if k > available:
        what = " other" if exclude_self else ""
        raise ParameterError(f"k={k} but the index has only {available}{what} rows; use k <= {available}")
    for name, value in (("chunk_rows", chunk_rows), ("index_chunk_rows", index_chunk_rows)):
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ParameterError(f"{name} must be an integer >= 1, got {value!r}")


def _check_rows(x: np.ndarray, name: str) -> None:
    norms = _row_norms(x)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "is all zeros: it has no direction" if norms[row] == 0 else "holds NaN or infinity"
        raise ParameterError(f"{name} row {row} {what}")


# --------------------------------------------------------------------------- torch backend
def _order(values, indices):
    """Sort each row by (value descending, index ascending); (q, n) torch tensors."""
    import torch

    by_index = torch.argsort(indices, dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)
    return values.gather(1, by_value), indices.gather(1, by_value)


def _block_topk(block, kk: int):
    """Exact top ``kk`` of each row of ``block`` (q, m); ties at the k-th place go to lower columns."""
    import torch

    if kk >= block.shape[1]:  # every column is kept: only their order matters (fixed by _order)
        values, columns = torch.topk(block, kk, dim=1, largest=True, sorted=True)
        return values, columns
    # torch.topk picks arbitrarily among values equal to the k-th one. Taking one more than needed
    # shows where that can happen (the (k+1)-th equals the k-th) without another pass over the block;
    # those rows are redone with a stable sort.
    values, columns = torch.topk(block, kk + 1, dim=1, largest=True, sorted=True)
    ambiguous = values[:, kk] == values[:, kk - 1]
    values, columns = values[:, :kk].contiguous(), columns[:, :kk].contiguous()
    if bool(ambiguous.any()):
        rows = torch.nonzero(ambiguous).squeeze(1)
        sorted_values, sorted_columns = torch.sort(block[rows], dim=1, descending=True, stable=True)
        values[rows], columns[rows] = sorted_values[:, :kk], sorted_columns[:, :kk]
    return values, columns


@NEIGHBOUR_BACKENDS.register("torch")
def _torch_topk(query: np.ndarray, index_unit: np.ndarray, *, k: int, chunk_rows: int, index_chunk_rows: int,
                exclude_self: bool, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from tqdm.auto import tqdm

    n_query, n_index = query.shape[0], index_unit.shape[0]
    sims = np.empty((n_query, k), dtype=np.float32)
    found = np.empty((n_query, k), dtype=np.int64)
    index_t = torch.from_numpy(index_unit)
    q_starts = range(0, n_query, chunk_rows)
    m_starts = range(0, n_index, index_chunk_rows)
    with torch.inference_mode(), tqdm(total=len(q_starts) * len(m_starts), desc="neighbours", unit="block",
                                      disable=not progress) as bar:
        for qa in q_starts:
            qb = min(qa + chunk_rows, n_query)
            q = torch.from_numpy(_unit_rows(query[qa:qb], name="query", first_row=qa))
            best_v = torch.empty((qb - qa, 0), dtype=torch.float32)
            best_i = torch.empty((qb - qa, 0), dtype=torch.int64)
            for ma in m_starts:
                mb = min(ma + index_chunk_rows, n_index)
                block = q @ index_t[ma:mb].T
                if exclude_self:
                    lo, hi = max(qa, ma), min(qb, mb)
                    if lo < hi:
                        own = torch.arange(lo, hi)
                        block[own - qa, own - ma] = float("-inf")
                values, columns = _block_topk(block, min(k, mb - ma))
                best_v, best_i = _order(torch.cat([best_v, values], 1), torch.cat([best_i, columns + ma], 1))
                best_v, best_i = best_v[:, :k], best_i[:, :k]
                bar.update()
            sims[qa:qb], found[qa:qb] = best_v.numpy(), best_i.numpy()
    return sims, found


# --------------------------------------------------------------------------- faiss backend
@NEIGHBOUR_BACKENDS.register("faiss")
def _faiss_topk(query: np.ndarray, index_unit: np.ndarray, *, k: int, chunk_rows: int, index_chunk_rows: int,
                exclude_self: bool, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss
    except ImportError as exc:
        raise ParameterError("backend 'faiss' needs the faiss package (pip install faiss-cpu, or faiss-gpu); "
                             "use the torch backend (backend='torch', --backend torch) otherwise") from exc
    import torch
    from tqdm.auto import tqdm

    flat = faiss.IndexFlatIP(index_unit.shape[1])
    flat.add(index_unit)
    extra = 1 if exclude_self else 0
    sims = np.empty((query.shape[0], k), dtype=np.float32)
    found = np.empty((query.shape[0], k), dtype=np.int64)
    for qa in tqdm(range(0, query.shape[0], chunk_rows), desc="neighbours", unit="chunk", disable=not progress):
        qb = min(qa + chunk_rows, query.shape[0])
        values, ids = flat.search(_unit_rows(query[qa:qb], name="query", first_row=qa), k + extra)
        if exclude_self:  # drop each row's own index wherever faiss put it, else the last hit
            own = ids == np.arange(qa, qb)[:, None]
            own[~own.any(axis=1), -1] = True
            keep = ~own
            values = values[keep].reshape(qb - qa, k)
            ids = ids[keep].reshape(qb - qa, k)
        v, i = _order(torch.from_numpy(np.ascontiguousarray(values)), torch.from_numpy(ids.astype(np.int64)))
        sims[qa:qb], found[qa:qb] = v.numpy(), i.numpy()
    return sims, found


# --------------------------------------------------------------------------- public
def cosine_topk(
    query: np.ndarray,
    index: np.ndarray,
    *,
    k: int = 5,
    chunk_rows: int = 2048,
    index_chunk_rows: int = 16384,
    exclude_self: bool = False,
    backend: str = "torch",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` index rows most cosine-similar to each query row, exactly.

    Parameters
    ----------
    query : (Q, D) float (float16/32/64) or int array
        Not modified; rows are L2-normalised inside (any nonzero norm).
    index : (M, D) float or int array
        Searched rows; L2-normalised inside into one float32 copy (M x D x 4 bytes).
    k : int
        Neighbours per query, 1 <= k <= M (M - 1 with ``exclude_self``).
    chunk_rows, index_chunk_rows : int
        Query and index rows per block. Memory beyond the inputs and the normalised index is about
        ``chunk_rows x index_chunk_rows x 9`` bytes (the float32 block, a bool mask, top-k); the
        defaults use ~300 MB, so 100k x 100k x 512-d fits 4 GB. Results do not depend on them (up to
        float32 rounding of the dot products).
    exclude_self : bool
        Self-search: the query IS the index (Q == M) and query row i never gets index row i (other
        rows identical to it still do).
    backend : {"torch", "faiss"}
        ``"faiss"`` needs the ``faiss`` package; it searches ``IndexFlatIP`` (exact) and gives the same
        neighbours, except that which of several rows tied at the k-th place are kept is faiss's choice.
    progress : bool
        Draw a tqdm bar over the blocks.

    Returns
    -------
    similarities : (Q, k) float32
        Cosine similarities, each row descending.
    indices : (Q, k) int64
        Row numbers into ``index``; among equal similarities the lower row number comes first (and is
        the one kept when ties straddle the k-th place).

    Raises
    ------
    ParameterError
        Not 2-D, dimensions differ, k out of range, NaN/infinite or all-zero rows, exclude_self with
        Q != M, an unknown backend (``RegistryError``), faiss missing for ``backend="faiss"``.

    Examples
    --------
    >>> sims, idx = cosine_topk(test_emb, train_emb, k=5, progress=False)  # doctest: +SKIP
    >>> nn_labels = train_labels[idx]            # (Q, k, 19), for transfer_labels  # doctest: +SKIP
    """
    query, index = _matrix(query, "query"), _matrix(index, "index")
    _check_topk_args(query, index, k, exclude_self, chunk_rows, index_chunk_rows)
    run = NEIGHBOUR_BACKENDS.get(backend)
    _check_rows(query, "query")  # fail before the search, not at the chunk holding the bad row
    if query.shape[0] == 0:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    index_unit = l2_normalise(index, name="index")
    return run(query, index_unit, k=int(k), chunk_rows=int(chunk_rows), index_chunk_rows=int(index_chunk_rows),
               exclude_self=exclude_self, progress=progress)


# --------------------------------------------------------------------------- label transfer
Rule = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
TRANSFER_RULES: Registry[Rule] = Registry("label-transfer rule")


@TRANSFER_RULES.register("mean")
def _rule_mean(scores: np.ndarray, labels: np.ndarray, weight: float) -> np.ndarray:
    """(1 - w) * score + w * label; w = 1 replaces the scores by the labels (2019)."""
    return (1.0 - weight) * scores + weight * labels


@TRANSFER_RULES.register("max")
def _rule_max(scores: np.ndarray, labels: np.ndarray, weight: float) -> np.ndarray:
    """max(score, w * label): the neighbour can only raise scores, never lower them."""
    return np.maximum(scores, weight * labels)


def _finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        raise ParameterError(f"{name} holds NaN or infinity (first at {tuple(np.argwhere(~np.isfinite(x))[0])})")


def transfer_labels(
    image_scores: np.ndarray,
    sims: np.ndarray,
    nn_labels: np.ndarray,
    *,
    threshold: float = LABEL_TRANSFER_THRESHOLD,
    weight: float = 1.0,
    rule: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """Blend each test image's nearest labelled image's labels into its scores, if similar enough.

    For test image ``i`` let ``j`` be its most similar neighbour (the first column of ``sims`` holding
    the row's maximum; :func:`cosine_topk` puts it in column 0). When ``sims[i, j] >= threshold``
    (inclusive) the scores become ``rule(scores[i], nn_labels[i, j], weight)``:

    ``"mean"`` (default): ``(1 - weight) * score + weight * label``.
    ``"max"``: ``max(score, weight * label)``.

    The default (``"mean"``, weight 1) is what the 2019 winner did: a matched test image's predicted
    labels were replaced by the matched labelled image's labels. 2019 compared with ``>`` (strictly
    above 0.65); here a similarity exactly at the threshold counts. Rows below the threshold are
    returned bit-identical. Other neighbours (columns) are not used.

    Parameters
    ----------
    image_scores : (Q, C) float
        Image-level class scores (probabilities in [0, 1] for the blend to mean anything). Not modified.
    sims : (Q, k) float
        Cosine similarities to the k nearest labelled images.
    nn_labels : (Q, k, C) float in [0, 1]
        Their labels: ``index_labels[indices]`` with the indices of :func:`cosine_topk`.
    threshold : float in [-1, 1]
    weight : float in [0, 1]
    rule : {"mean", "max"}

    Returns
    -------
    scores : (Q, C)
        A new array, the dtype of ``image_scores`` (float64 if it was not float).
    touched : (Q,) bool
        Where the nearest similarity reached the threshold. Also logged (INFO) as a count.
    """
    scores = np.asarray(image_scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    sims, nn_labels = np.asarray(sims), np.asarray(nn_labels)
    if scores.ndim != 2 or sims.ndim != 2 or nn_labels.ndim != 3:
        raise ParameterError(f"expected image_scores (Q, C), sims (Q, k), nn_labels (Q, k, C); got shapes "
                             f"{scores.shape}, {sims.shape}, {nn_labels.shape}")
    q, c = scores.shape
    if sims.shape[0] != q or sims.shape[1] < 1 or nn_labels.shape != (q, sims.shape[1], c):
        raise ParameterError(f"shapes do not fit: image_scores {scores.shape}, sims {sims.shape} (need ({q}, k>=1)), "
                             f"nn_labels {nn_labels.shape} (need ({q}, k, {c}))")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ParameterError(f"threshold is a cosine similarity in [-1, 1], got {threshold!r}")
    if not 0.0 <= float(weight) <= 1.0:
        raise ParameterError(f"weight must be in [0, 1], got {weight!r}")
    blend = TRANSFER_RULES.get(rule)
    _finite(scores, "image_scores")
    _finite(sims, "sims")
    _finite(nn_labels, "nn_labels")
    if ((nn_labels < 0) | (nn_labels > 1)).any():
        raise ParameterError("nn_labels must lie in [0, 1]")

    out = scores.copy()
    if q == 0:
        return out, np.zeros(0, dtype=bool)
    nearest = np.argmax(sims, axis=1)
    best = sims[np.arange(q), nearest]
    touched = best >= threshold
    rows = np.flatnonzero(touched)
    if rows.size:
        mixed = blend(scores[rows].astype(np.float64), nn_labels[rows, nearest[rows]].astype(np.float64), float(weight))
        out[rows] = mixed.astype(out.dtype)
    log.info("label transfer: %d of %d images had a labelled neighbour with cosine >= %.3f (rule %s, weight %.2f)",
             rows.size, q, threshold, rule, weight)
    return out, touched


# --------------------------------------------------------------------------- duplicates
def embedding_duplicates(
    ids: np.ndarray,
    embeddings: np.ndarray,
    *,
    threshold: float = DUPLICATE_THRESHOLD,
    max_neighbours: int = 10,
    chunk_rows: int = 2048,
    index_chunk_rows: int = 16384,
    backend: str = "torch",
    progress: bool = True,
):
    """Pairs of rows whose embeddings are at least ``threshold`` cosine-similar.

    A self-search (:func:`cosine_topk` with ``exclude_self``) finds each row's ``max_neighbours``
    nearest others; pairs at or above ``threshold`` (inclusive) are kept, each unordered pair once. A
    row with more than ``max_neighbours`` duplicates loses some pairs (its group usually stays
    connected through the others); a warning says when the limit was reached.

    ``threshold`` (default :data:`DUPLICATE_THRESHOLD` = 0.95) is a starting point, not a tuned
    value: look at real pairs just above and below it before relying on it.

    Parameters
    ----------
    ids : (N,) sequence of str
    embeddings : (N, D) float
        Any nonzero norms (normalised inside).
    threshold : float in [-1, 1]
    max_neighbours : int >= 1
        Capped at N - 1.
    chunk_rows, index_chunk_rows, backend, progress
        As for :func:`cosine_topk`.

    Returns
    -------
    pandas.DataFrame
        Columns ``id_a, id_b, similarity`` (float32 cosine); ``id_a`` is the pair's earlier row; rows
        sorted by (row of id_a, row of id_b). Empty (with those columns) when N < 2 or none pass.
    """
    import pandas as pd

    ids = np.asarray(ids).astype(str)
    embeddings = _matrix(embeddings, "embeddings")
    if ids.shape != (embeddings.shape[0],):
        raise ParameterError(f"{ids.shape} ids for {embeddings.shape[0]} embedding rows; they must match")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ParameterError(f"threshold is a cosine similarity in [-1, 1], got {threshold!r}")
    if not (isinstance(max_neighbours, (int, np.integer)) and max_neighbours >= 1):
        raise ParameterError(f"max_neighbours must be an integer >= 1, got {max_neighbours!r}")
    empty = pd.DataFrame({"id_a": pd.Series(dtype=str), "id_b": pd.Series(dtype=str),
                          "similarity": pd.Series(dtype=np.float32)})
    n = embeddings.shape[0]
    if n < 2:
        return empty
    k = min(int(max_neighbours), n - 1)
    sims, idx = cosine_topk(embeddings, embeddings, k=k, exclude_self=True, chunk_rows=chunk_rows,
                            index_chunk_rows=index_chunk_rows, backend=backend, progress=progress)
    close = sims >= threshold
    if k < n - 1 and close[:, -1].any():
        log.warning("%d rows have %d or more neighbours at cosine >= %.3f: some of their pairs may be missing; "
                    "raise max_neighbours", int(close[:, -1].sum()), k, threshold)
    rows = np.repeat(np.arange(n), k)[close.ravel()]
    cols = idx.ravel()[close.ravel()]
    found = sims.ravel()[close.ravel()]
    if rows.size == 0:
        return empty
    a, b = np.minimum(rows, cols), np.maximum(rows, cols)
    order = np.lexsort((-found, b, a))  # by pair, the larger of the two directions' similarities first
    a, b, found = a[order], b[order], found[order]
    first = np.ones(a.size, dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, found = a[first], b[first], found[first]
    log.info("%d embedding-duplicate pairs among %d rows (cosine >= %.3f)", a.size, n, threshold)
    return pd.DataFrame({"id_a": ids[a], "id_b": ids[b], "similarity": found.astype(np.float32)})
