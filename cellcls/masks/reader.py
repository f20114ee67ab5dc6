"""Read side of a mask cache: the entries of ONE parameter set.

:func:`open_reader` (what ``MaskCache.reader`` runs) checks that a folder exists, holds entries,
and that its "ok" entries share one ``params_hash`` (or picks an expected one); the
:class:`CacheReader` it returns reads every entry under that key. :func:`mixing_warning` tells a
writer, before it starts, that its run would leave a folder mixed.
"""
from __future__ import annotations

__all__ = ["CacheReader", "mixing_warning", "open_reader", "parameter_sets"]

import dataclasses
import logging
from typing import Any, Iterable, Iterator

from cellcls.errors import CacheError

from ._files import check_key, read_sidecar
from ._identity import ParameterSet, describe_parameter_set, mixed_cache_message, readable_differences
from .cache import CACHE_VERSION, CacheEntry, MaskCache

log = logging.getLogger(__name__)


class CacheReader:
    """The "ok" entries of one parameter set of a mask cache, read under that key only.

    Build it with :meth:`cellcls.masks.MaskCache.reader`, which refuses a mixed cache. Every
    :meth:`read` passes the set's ``params_hash``, so an entry rewritten since under another key
    is refused (CacheError) instead of silently mixed in.

    Attributes
    ----------
    cache : MaskCache
    parameter_set : ParameterSet
        Key, backend, scale, recorded parameters and the IDs listed when the reader was opened.
    """

    def __init__(self, cache: MaskCache, parameter_set: ParameterSet) -> None:
        self.cache = cache
        self.parameter_set = parameter_set
        self._ids = frozenset(parameter_set.ids)

    def __repr__(self) -> str:
        return f"CacheReader({str(self.cache.root)!r}, {len(self)} entries, {self.describe()})"

    @property
    def params_hash(self) -> str:
        return self.parameter_set.params_hash

    @property
    def params(self) -> dict[str, Any]:
        """The recorded parameters of the set (a copy; ``{}`` when the writer recorded none)."""
        return dict(self.parameter_set.params)

    @property
    def backend(self) -> str:
        return self.parameter_set.backend

    @property
    def scale(self) -> float:
        """Segmentation scale of every entry (h ~= H * scale)."""
        return self.parameter_set.scale

    def ids(self) -> list[str]:
        """Sorted IDs of the set's "ok" entries (as listed when the reader was opened)."""
        return list(self.parameter_set.ids)

    def __len__(self) -> int:
        return self.parameter_set.n_entries

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self.parameter_set.ids)

    def read(self, image_id: str, *, upscale: bool = False) -> CacheEntry:
        """``MaskCache.read(image_id, upscale=upscale)`` under this set's key (other keys: CacheError)."""
        return self.cache.read(image_id, upscale=upscale, params_hash=self.params_hash)

    def describe(self) -> str:
        """One line: backend, scale, image scale and the short params_hash."""
        return describe_parameter_set(self.parameter_set)


def open_reader(cache: MaskCache, *, params_hash: str | None = None) -> CacheReader:
    """See :meth:`MaskCache.reader`."""
    root = cache.root
    build = f"build it with `cellcls segment --images IMAGES --out {root}`"
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise CacheError(f"mask cache folder {root} {what}; {build}")
    manifest = cache.manifest()
    if manifest.empty:
        raise CacheError(f"mask cache folder {root} holds no entries (no <ID>.json sidecars); {build}")
    sets = _parameter_sets(cache, manifest)
    if params_hash is not None:
        return _reader_for(cache, params_hash, sets)
    outdated = manifest.loc[_ok_rows(manifest) & ~_current_version(manifest)]
    if len(outdated):
        versions = ", ".join(sorted({str(v) for v in outdated["cache_version"]}))
        raise CacheError(
            f"{len(outdated)} entries of mask cache {root} (e.g. {outdated['ID'].iloc[0]}) were written by cache "
            f"format version {versions}; this cellcls reads version {CACHE_VERSION}. Re-run "
            f"`cellcls segment --out {root}` with the same options to rebuild them")
    if not sets:
        counts = manifest["status"].fillna("unreadable").value_counts()
        found = ", ".join(f"{n} {status}" for status, n in counts.items())
        raise CacheError(f"mask cache {root} has no usable entry ({found}; reasons in the manifest column "
                         f"'error'); {build}")
    if len(sets) > 1:
        raise CacheError(mixed_cache_message(root, sets))
    return CacheReader(cache, sets[0])


def parameter_sets(cache: MaskCache) -> list[ParameterSet]:
    """See :meth:`MaskCache.parameter_sets`."""
    return _parameter_sets(cache, cache.manifest())


def mixing_warning(cache: MaskCache, params_hash: str, *, params: dict[str, Any] | None = None,
                   replacing: Iterable[str] = ()) -> str | None:
    """See :meth:`MaskCache.mixing_warning`."""
    check_key("mixing_warning", params_hash=params_hash)
    replaced = set(replacing)
    staying = []
    for pset in parameter_sets(cache):
        kept = tuple(i for i in pset.ids if i not in replaced)
        if pset.params_hash != params_hash and kept:
            staying.append(dataclasses.replace(pset, ids=kept))
    if not staying:
        return None
    params = dict(params or {})
    new = ParameterSet(params_hash=params_hash, backend=str(params.get("backend", "(not recorded)")),
                       scale=float(params.get("scale", "nan")), params=params)
    differ = readable_differences([new, *staying])
    held = "; ".join(f"{s.n_entries} entr{'y' if s.n_entries == 1 else 'ies'} made with "
                     f"{describe_parameter_set(s, also=differ)}" for s in staying)
    return (f"mask cache {cache.root} holds {held}, which this run ({describe_parameter_set(new, also=differ)}) "
            "does not replace: the folder will mix parameter sets and its readers (segment-score, "
            "prior-submission) will refuse it. Segment all its images with one parameter set "
            f"(`cellcls segment --out {cache.root} --overwrite` with the wanted options) or write this run "
            "to a folder of its own")


# --------------------------------------------------------------------- internals
def _reader_for(cache: MaskCache, params_hash: str, sets: list[ParameterSet]) -> CacheReader:
    check_key("reader", params_hash=params_hash)
    chosen = next((s for s in sets if s.params_hash == params_hash), None)
    if chosen is None:
        held = "; ".join(f"{s.n_entries} with {describe_parameter_set(s)}" for s in sets) or "none usable"
        raise CacheError(
            f"mask cache {cache.root} has no entry made with the expected parameters (params_hash "
            f"{params_hash[:12]}); its entries: {held}. Re-run `cellcls segment --out {cache.root}` with the "
            "expected parameters, or open the folder that was made with them")
    others = sum(s.n_entries for s in sets) - chosen.n_entries
    if others:
        log.info("%s: reading the %d entries of params_hash %s; %d entries of other parameter sets are refused",
                 cache.root, chosen.n_entries, params_hash[:12], others)
    return CacheReader(cache, chosen)


def _parameter_sets(cache: MaskCache, manifest: "pandas.DataFrame") -> list[ParameterSet]:  # noqa: F821
    usable = manifest.loc[_ok_rows(manifest) & _current_version(manifest) & manifest["params_hash"].notna()]
    sets = []
    for params_hash, group in usable.groupby("params_hash", sort=True):
        group = group.sort_values("ID", kind="stable")
        first = group.iloc[0]
        sets.append(ParameterSet(
            params_hash=str(params_hash), backend=str(first["backend"]), scale=float(first["scale"]),
            params=_recorded_params(cache, str(first["ID"])), ids=tuple(group["ID"].astype(str))))
    return sorted(sets, key=lambda s: (-s.n_entries, s.params_hash))


def _recorded_params(cache: MaskCache, image_id: str) -> dict[str, Any]:
    try:
        params = read_sidecar(cache.sidecar_path(image_id)).get("params")
    except (OSError, ValueError):
        return {}
    return params if isinstance(params, dict) else {}


def _ok_rows(manifest: "pandas.DataFrame") -> "pandas.Series":  # noqa: F821
    return manifest["status"].eq("ok").fillna(False).astype(bool)


def _current_version(manifest: "pandas.DataFrame") -> "pandas.Series":  # noqa: F821
    return manifest["cache_version"].eq(CACHE_VERSION).fillna(False).astype(bool)
