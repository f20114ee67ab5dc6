"""Embedding commands: ``cellcls neighbors`` (cosine top-k between two embedding files) and
``cellcls dedup-embeddings`` (near-duplicate images by embedding).

Embedding files are ``emb.npz`` archives (``ids``, L2-normalised float32 ``embeddings``, optional
``labels``), documented in :mod:`cellcls.embeddings`. Top-level imports stay light; the work is
imported inside ``run``.
"""
from __future__ import annotations

import argparse

from cellcls.cli import Bounded, Command, add_progress_option, progress_enabled

__all__ = ["NEIGHBORS", "DEDUP_EMBEDDINGS"]


def _backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("torch", "faiss"), default="torch",
                        help="exact search engine: torch (default) or faiss IndexFlatIP (needs the faiss package)")


# --------------------------------------------------------------------------- neighbors
def _neighbors_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--query", required=True, metavar="NPZ", help="embeddings to find neighbours for (test)")
    parser.add_argument("--index", required=True, metavar="NPZ", help="embeddings searched (labelled images)")
    parser.add_argument("--k", type=Bounded(int, low=1), default=5, help="neighbours per query (default 5)")
    parser.add_argument("--out", required=True, metavar="CSV", help="output: query_id,rank,index_id,similarity")
    parser.add_argument("--exclude-self", action="store_true",
                        help="self-search: --query and --index are the same embeddings; no row is its own neighbour")
    _backend_option(parser)
    add_progress_option(parser)


def _neighbors_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from cellcls.embeddings import check_same_dimension, read_embeddings
    from cellcls.errors import EmbeddingError
    from cellcls.neighbors import LABEL_TRANSFER_THRESHOLD, cosine_topk

    query = read_embeddings(args.query)
    index = read_embeddings(args.index)
    check_same_dimension(query, index)
    if args.exclude_self and not np.array_equal(query.ids, index.ids):
        raise EmbeddingError(f"--exclude-self needs --query and --index to hold the same IDs in the same order; "
                             f"{args.query} ({len(query)} rows) and {args.index} ({len(index)} rows) differ")
    sims, idx = cosine_topk(query.embeddings, index.embeddings, k=args.k, exclude_self=args.exclude_self,
                            backend=args.backend, progress=progress_enabled(args))
    k = sims.shape[1]
    table = pd.DataFrame({
        "query_id": np.repeat(query.ids, k),
        "rank": np.tile(np.arange(1, k + 1), len(query)),
        "index_id": index.ids[idx.ravel()],
        "similarity": sims.ravel(),
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6f")
    print(f"{len(query)} queries x {len(index)} index rows ({query.dim}-d), top {k} -> {args.out}")
    if len(query):
        top = sims[:, 0]
        above = int((top >= LABEL_TRANSFER_THRESHOLD).sum())
        print(f"nearest similarity: median {np.median(top):.3f}, min {top.min():.3f}, max {top.max():.3f}; "
              f"{above} of {len(query)} queries at >= {LABEL_TRANSFER_THRESHOLD} (the 2019 label-transfer threshold)")
    return 0


NEIGHBORS = Command(
    name="neighbors",
    help="exact cosine nearest neighbours between two embedding files",
    description="For every row of --query, the --k most cosine-similar rows of --index (exact, in blocks, "
    "so 100k x 100k fits a few GB). Both files are emb.npz archives (ids, L2-normalised embeddings; format "
    "in cellcls.embeddings). Writes one CSV row per (query, rank): rank 1 is the nearest; equal similarities "
    "are ordered by index row. With --exclude-self (same file twice) no image is its own neighbour.",
    example="""
    cellcls neighbors --query test_emb.npz --index train_emb.npz --k 5 --out nn.csv
    cellcls neighbors --query train_emb.npz --index train_emb.npz --k 5 --exclude-self --out nn_train.csv
    """,
    add_arguments=_neighbors_arguments,
    run=_neighbors_run,
)


# --------------------------------------------------------------------------- dedup-embeddings
def _dedup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", required=True, nargs="+", metavar="NPZ",
                        help="embedding file(s) searched together; IDs must be unique across them")
    parser.add_argument("--out", required=True, metavar="CSV",
                        help="output: group,ID,folder of every duplicate (as 'cellcls dedup'; folder = its NPZ)")
    parser.add_argument("--pairs", metavar="CSV", help="also write the pairs: id_a,id_b,similarity")
    parser.add_argument("--threshold", type=Bounded(float, low=-1, high=1), default=None, metavar="COS",
                        help="smallest cosine similarity that counts as a duplicate (default 0.95: a starting "
                        "point, check it on your data)")
    parser.add_argument("--max-neighbours", type=Bounded(int, low=1), default=10, metavar="K",
                        help="neighbours examined per image (default 10)")
    _backend_option(parser)
    add_progress_option(parser)


def _dedup_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from cellcls.dedup import DuplicateRow, group_pairs, write_duplicates
    from cellcls.embeddings import check_same_dimension, read_embeddings
    from cellcls.errors import EmbeddingError
    from cellcls.neighbors import DUPLICATE_THRESHOLD, embedding_duplicates

    threshold = DUPLICATE_THRESHOLD if args.threshold is None else args.threshold
    sets = [read_embeddings(p) for p in args.embeddings]
    for other in sets[1:]:
        check_same_dimension(sets[0], other)
    ids = np.concatenate([s.ids for s in sets])
    source = np.concatenate([np.full(len(s), s.path, dtype=object) for s in sets])
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        repeated = str(unique[counts > 1][0])
        files = sorted({source[i] for i in np.flatnonzero(ids == repeated)})
        raise EmbeddingError(f"ID {repeated!r} appears in more than one file ({', '.join(files)}); "
                             f"IDs must be unique across --embeddings")
    pairs = embedding_duplicates(ids, np.concatenate([s.embeddings for s in sets]), threshold=threshold,
                                 max_neighbours=args.max_neighbours, backend=args.backend,
                                 progress=progress_enabled(args))
    if args.pairs:
        Path(args.pairs).parent.mkdir(parents=True, exist_ok=True)
        pairs.to_csv(args.pairs, index=False, float_format="%.6f")
    row_of = {image_id: r for r, image_id in enumerate(ids)}
    edges = np.array([[row_of[a], row_of[b]] for a, b in zip(pairs["id_a"], pairs["id_b"])], dtype=np.int64)
    groups = group_pairs(len(ids), edges.reshape(-1, 2))
    rows = [DuplicateRow(int(g), str(ids[r]), str(source[r])) for r, g in enumerate(groups) if g >= 0]
    rows.sort(key=lambda r: (r.group, r.folder, r.image_id))
    write_duplicates(rows, args.out)
    n_groups = len({r.group for r in rows})
    print(f"{len(pairs)} pairs, {n_groups} duplicate groups, {len(rows)} images in them "
          f"(cosine >= {threshold:g}) -> {args.out}" + (f"; pairs -> {args.pairs}" if args.pairs else ""))
    for path in dict.fromkeys(source):
        print(f"  {path}: {sum(r.folder == path for r in rows)} images")
    return 0


DEDUP_EMBEDDINGS = Command(
    name="dedup-embeddings",
    help="find near-duplicate images by embedding similarity (companion of 'cellcls dedup')",
    description="Self-search the embeddings of one or more emb.npz files (format in cellcls.embeddings) and "
    "group images whose cosine similarity is at least --threshold (pairs chain into groups). Writes the "
    "same group,ID,folder CSV as 'cellcls dedup' (folder = the embeddings file), ready for "
    "'cellcls folds --group-col group'. The default threshold is untuned: inspect --pairs near it first.",
    example="""
    cellcls dedup-embeddings --embeddings train_emb.npz hpa_public_emb.npz --out dups.csv --pairs pairs.csv
    cellcls dedup-embeddings --embeddings train_emb.npz --out dups.csv --threshold 0.97
    """,
    add_arguments=_dedup_arguments,
    run=_dedup_run,
)
