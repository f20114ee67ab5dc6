"""Blending per-cell scores with image scores, and choosing the blend on validation cells. Pure numpy.

One image at a time: ``cell_scores`` (N, 19) from a cell model (or image model on crops),
``image_scores`` (19,) from an image-level model, and the image's N cell-table rows
(:mod:`cellcls.masks.table`, every measure in ORIGINAL pixels) give blended scores (N, 19),
float32 in [0, 1]. Every cell keeps all 19 classes (mAP rewards a full ranking).

A blend is a :class:`BlendSpec`: a rule from :data:`BLEND_RULES`, then any number of modifiers
from :data:`BLEND_MODIFIERS`, each with keyword options. Its text form (:meth:`BlendSpec.parse`,
``str(spec)``) is ``RULE[:k=v,...][+MODIFIER[:k=v,...]]...``, e.g. ``"mean:w=0.6+area7:image_scale=0.25"``.

Rules (HPA_FACTS §5, §8; c = cell score, m = image score, classes 0..17 and 18 = Negative)
----------------------------------------------------------------------------------------
cell        c (the identity).
mean        w c + (1 - w) m; ``w`` = 0.7.
fourth      4th place: w c_i + (1 - w) mean_j c_j over the OTHER cells j of the image (all of them, or
            with ``others="interior"`` those not touching the image border); a cell without others
            keeps c_i. Then, with ``negative="one_minus_max"`` (their rule, the default), Negative =
            1 - max of the cell's 18 blended other classes; ``negative="blend"`` keeps the blend.
            The image score m is not used: the other cells stand in for the image.
product12   12th place: classes 0..17 = c m; Negative = max(c_18, m_18); then classes 0..17 x
            (1 - Negative).

Modifiers (area7 and border4 multiply all 19 scores of a cell by a factor in [0, 1])
-----------------------------------------------------------------------------------
area7       7th place: x min(1, area / t), t = ``border_px`` (80,000) for cells touching the image
            border and ``interior_px`` (32,000) otherwise. The thresholds are pixels at FULL HPA
            resolution; ``image_scale`` (required) is the linear size of this image's pixels grid
            relative to that (1 for Kaggle images; 0.25 for a world drawn at quarter size), and the
            thresholds are multiplied by ``image_scale ** 2``. Areas: column ``cell_area_px``.
border4     4th place: x f(r_ud) f(r_lr), r = (side - n) / side, f(r) = 1 if r > 0.3, (3.33 r) ** 0.1 if
            r > 0.01, else 0.001. The crop is the cell's bounding box (y0, x0, y1, x1); ``n_ud`` is the
            number of the cell's nucleus pixels on its top or bottom box edge (the larger; side = box
            width), ``n_lr`` the same on the left/right edges (side = box height). A cell cut by the
            image border has its cut nucleus on that edge. Columns ``nucleus_edge_ud_px`` and
            ``nucleus_edge_lr_px``, measured by :func:`nucleus_edge_pixels` from the nuclei map.
dark        the protein signal: classes 0..17 x (1 - d), Negative = the mean of its score and d, where
            d in [0, 1] is the cell's darkness, how little its green channel rises above background
            against the image's bright cells (:mod:`cellcls.signal`). Column ``darkness``, measured by
            :func:`cellcls.signal.entry_cell_darkness` from the image.

Choosing a blend (:mod:`infer.blend_choice`): :func:`choose_blend` scores candidate specs on validation cells with known truth
labels by :func:`per_cell_map`, the per-cell ranking part of the competition's mAP@0.6 (exact when
the predicted masks are the true cells; see there).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cellcls.classes import NEGATIVE, NUM_CLASSES
from cellcls.errors import ParameterError
from cellcls.masks.table import AxisMap, check_label_geometry
from cellcls.registry import Registry

__all__ = [
    "BLEND_RULES",
    "BLEND_MODIFIERS",
    "EDGE_COLUMNS",
    "DARKNESS_COLUMN",
    "BlendSpec",
    "blend",
    "border_factor",
    "nucleus_edge_pixels",
    "add_modifier_columns",
]

Rule = Callable[..., np.ndarray]
Modifier = Callable[..., np.ndarray]
CellRows = Mapping[str, Any]  # a cell-table DataFrame, or a dict of column -> (N,) array

BLEND_RULES: Registry[Rule] = Registry("blend rule")
"""``rule(cell (N, 19) float64, image (19,) float64, cells, **options) -> (N, 19)``."""

BLEND_MODIFIERS: Registry[Modifier] = Registry("blend modifier")
"""``modifier(scores (N, 19) float64, cells, **options) -> (N, 19)``, applied after the rule."""

EDGE_COLUMNS: tuple[str, str] = ("nucleus_edge_ud_px", "nucleus_edge_lr_px")
"""Columns the ``border4`` modifier reads, made by :func:`nucleus_edge_pixels`."""

DARKNESS_COLUMN = "darkness"
"""Column the ``dark`` modifier reads, made by :func:`cellcls.signal.entry_cell_darkness`."""

#: 7th place's area thresholds, pixels at full HPA resolution.
AREA7_BORDER_PX = 80_000
AREA7_INTERIOR_PX = 32_000
#: 4th place's border function f(r): 1 above HIGH, (SLOPE r) ** POWER above LOW, FLOOR below.
BORDER4_HIGH, BORDER4_LOW, BORDER4_SLOPE, BORDER4_POWER, BORDER4_FLOOR = 0.3, 0.01, 3.33, 0.1, 0.001


# ----------------------------------------------------------------------------- inputs
def _column(cells: CellRows | None, name: str, n: int, user: str) -> np.ndarray:
    if cells is None:
        raise ParameterError(f"{user} needs the image's cell-table rows (column {name!r}); pass cells=")
    try:
        values = np.asarray(cells[name])
    except (KeyError, IndexError):
        extra = {**dict.fromkeys(EDGE_COLUMNS, " (make them with infer.blend.nucleus_edge_pixels)"),
                 DARKNESS_COLUMN: " (make it with cellcls.signal.entry_cell_darkness)"}.get(name, "")
        raise ParameterError(f"{user} needs column {name!r} in the cell rows{extra}") from None
    if values.shape != (n,):
        raise ParameterError(f"{user}: column {name!r} has shape {values.shape}, expected ({n},) (one per cell)")
    return values


def _probabilities(values: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise ParameterError(f"{name} must have shape {shape}, got {array.shape}")
    bad = ~((array >= 0.0) & (array <= 1.0))
    if bad.any():
        where = tuple(int(v) for v in np.argwhere(bad)[0])
        raise ParameterError(f"{name}{list(where)} = {array[where]!r} is not a probability in [0, 1] "
                             f"({int(bad.sum())} such values)")
    return array


def _fraction(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ParameterError(f"{name} must be in [0, 1], got {value!r}")
    return value


# ----------------------------------------------------------------------------- rules
@BLEND_RULES.register("cell")
def _cell(cell: np.ndarray, image: np.ndarray, cells: CellRows | None) -> np.ndarray:
    return cell.copy()


@BLEND_RULES.register("mean")
def _mean(cell: np.ndarray, image: np.ndarray, cells: CellRows | None, *, w: float = 0.7) -> np.ndarray:
    w = _fraction(w, "mean: w")
    return w * cell + (1.0 - w) * image[None, :]


@BLEND_RULES.register("fourth")
def _fourth(cell: np.ndarray, image: np.ndarray, cells: CellRows | None, *, w: float = 0.7,
            negative: str = "one_minus_max", others: str = "all") -> np.ndarray:
    w = _fraction(w, "fourth: w")
    n = len(cell)
    if others == "all":
        valid = np.ones(n, dtype=bool)
    elif others == "interior":
        valid = ~_column(cells, "touches_border", n, "fourth (others='interior')").astype(bool)
    else:
        raise ParameterError(f"fourth: others must be 'all' or 'interior', got {others!r}")
    if negative not in ("one_minus_max", "blend"):
        raise ParameterError(f"fourth: negative must be 'one_minus_max' or 'blend', got {negative!r}")
    total = cell[valid].sum(axis=0)
    count = np.count_nonzero(valid) - valid.astype(np.int64)  # others of each cell
    others_sum = total[None, :] - np.where(valid[:, None], cell, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        others_mean = others_sum / count[:, None]
    out = np.where(count[:, None] > 0, w * cell + (1.0 - w) * others_mean, cell)
    if negative == "one_minus_max" and n:
        out[:, NEGATIVE] = 1.0 - np.delete(out, NEGATIVE, axis=1).max(axis=1)
    return out


@BLEND_RULES.register("product12")
def _product12(cell: np.ndarray, image: np.ndarray, cells: CellRows | None) -> np.ndarray:
    out = cell * image[None, :]
    neg = np.maximum(cell[:, NEGATIVE], image[NEGATIVE])
    out *= (1.0 - neg)[:, None]
    out[:, NEGATIVE] = neg
    return out


# ----------------------------------------------------------------------------- modifiers
@BLEND_MODIFIERS.register("area7")
def _area7(scores: np.ndarray, cells: CellRows | None, *, image_scale: float,
           border_px: float = AREA7_BORDER_PX, interior_px: float = AREA7_INTERIOR_PX) -> np.ndarray:
    image_scale = float(image_scale)
    if not (np.isfinite(image_scale) and image_scale > 0):
        raise ParameterError(f"area7: image_scale must be a positive number (1 = full HPA resolution), "
                             f"got {image_scale!r}")
    n = len(scores)
    area = _column(cells, "cell_area_px", n, "area7").astype(np.float64)
    border = _column(cells, "touches_border", n, "area7").astype(bool)
    threshold = np.where(border, float(border_px), float(interior_px)) * image_scale ** 2
    return scores * np.minimum(1.0, area / threshold)[:, None]


def border_factor(ratio: np.ndarray) -> np.ndarray:
    """4th place's f(r) on an array of ratios: 1 if r > 0.3, (3.33 r) ** 0.1 if r > 0.01, else 0.001."""
    r = np.asarray(ratio, dtype=np.float64)
    middle = (BORDER4_SLOPE * np.clip(r, BORDER4_LOW, None)) ** BORDER4_POWER
    return np.where(r > BORDER4_HIGH, 1.0, np.where(r > BORDER4_LOW, middle, BORDER4_FLOOR))


@BLEND_MODIFIERS.register("border4")
def _border4(scores: np.ndarray, cells: CellRows | None) -> np.ndarray:
    n = len(scores)
    y0, x0, y1, x1 = (_column(cells, c, n, "border4").astype(np.float64) for c in ("y0", "x0", "y1", "x1"))
    n_ud, n_lr = (_column(cells, c, n, "border4").astype(np.float64) for c in EDGE_COLUMNS)
    width, height = np.maximum(x1 - x0, 1.0), np.maximum(y1 - y0, 1.0)
    factor = border_factor((width - n_ud) / width) * border_factor((height - n_lr) / height)
    return scores * factor[:, None]


@BLEND_MODIFIERS.register("dark")
def _dark(scores: np.ndarray, cells: CellRows | None) -> np.ndarray:
    darkness = _probabilities(_column(cells, DARKNESS_COLUMN, len(scores), "dark"), (len(scores),), "darkness")
    out = scores * (1.0 - darkness)[:, None]
    out[:, NEGATIVE] = 0.5 * (scores[:, NEGATIVE] + darkness)
    return out


def nucleus_edge_pixels(nuclei: np.ndarray, cells: CellRows, *, original_shape: Sequence[int],
                        image_id: str = "?") -> dict[str, np.ndarray]:
    """Nucleus pixels on the edges of each cell's bounding box, in original pixels (for ``border4``).

    Parameters
    ----------
    nuclei : (h, w) integer label map
        Nuclei at segmentation scale (or at (H, W)); a nucleus carries its cell's id. Not modified.
    cells : cell-table rows of the image
        Columns ``cell_id`` and the box ``y0, x0, y1, x1`` (half-open, original pixels).
    original_shape : (H, W)
        The map is taken as upscaled to it by nearest neighbour (as the cell table and crops see it).

    Returns
    -------
    dict with ``nucleus_edge_ud_px`` and ``nucleus_edge_lr_px``, (N,) int64 aligned with the rows:
    the larger count of the cell's nucleus pixels in the box's first / last row, and in its first /
    last column.
    """
    height, width = check_label_geometry(np.shape(nuclei), original_shape, image_id=image_id)
    labels = np.asarray(nuclei)
    rows, cols = AxisMap(labels.shape[0], height), AxisMap(labels.shape[1], width)
    n = len(np.asarray(cells["cell_id"]))
    ids = _column(cells, "cell_id", n, "nucleus_edge_pixels").astype(np.int64)
    box = [_column(cells, c, n, "nucleus_edge_pixels").astype(np.int64) for c in ("y0", "x0", "y1", "x1")]
    ud, lr = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i, (cid, y0, x0, y1, x1) in enumerate(zip(ids.tolist(), *(b.tolist() for b in box))):
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ParameterError(f"image {image_id!r}: cell {cid} box {(y0, x0, y1, x1)} is empty or outside the "
                                 f"image {(height, width)}")
        span_c, span_r = cols.index[x0:x1], rows.index[y0:y1]
        top = np.count_nonzero(labels[rows.index[y0], span_c] == cid)
        bottom = np.count_nonzero(labels[rows.index[y1 - 1], span_c] == cid)
        left = np.count_nonzero(labels[span_r, cols.index[x0]] == cid)
        right = np.count_nonzero(labels[span_r, cols.index[x1 - 1]] == cid)
        ud[i], lr[i] = max(top, bottom), max(left, right)
    return {EDGE_COLUMNS[0]: ud, EDGE_COLUMNS[1]: lr}


# ----------------------------------------------------------------------------- specs
Options = tuple[tuple[str, Any], ...]


def _options(values: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> Options:
    items = values.items() if isinstance(values, Mapping) else (values or ())
    return tuple((str(k), v) for k, v in items)


def _check_options(kind: str, name: str, fn: Callable, options: Options, skip: int) -> None:
    parameters = list(inspect.signature(fn).parameters.values())[skip:]
    allowed = {p.name for p in parameters}
    required = {p.name for p in parameters if p.default is inspect.Parameter.empty}
    given = {k for k, _ in options}
    unknown = sorted(given - allowed)
    if unknown:
        raise ParameterError(f"{kind} {name!r} takes options {sorted(allowed) or 'none'}, got {unknown}")
    missing = sorted(required - given)
    if missing:
        raise ParameterError(f"{kind} {name!r} needs option(s) {missing}, e.g. {name}:{missing[0]}=1")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def _format_part(name: str, options: Options) -> str:
    return name + (":" + ",".join(f"{k}={_format_value(v)}" for k, v in options) if options else "")


def _parse_part(text: str) -> tuple[str, Options]:
    name, _, rest = text.strip().partition(":")
    options = []
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"blend option {item!r} in {text!r} is not KEY=VALUE")
        options.append((key.strip(), _parse_value(value)))
    return name.strip(), tuple(options)


@dataclass(frozen=True)
class BlendSpec:
    """A blend rule with options, followed by modifiers with options.

    Examples
    --------
    >>> spec = BlendSpec.parse("mean:w=0.6+area7:image_scale=0.25")
    >>> spec.rule, dict(spec.options), spec.modifiers[0][0]
    ('mean', {'w': 0.6}, 'area7')
    >>> str(spec)
    'mean:w=0.6+area7:image_scale=0.25'
    """

    rule: str = "cell"
    options: Options = ()
    modifiers: tuple[tuple[str, Options], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _options(self.options))
        mods = tuple((str(name), _options(opts)) for name, opts in self.modifiers)
        object.__setattr__(self, "modifiers", mods)
        _check_options("blend rule", self.rule, BLEND_RULES.get(self.rule), self.options, skip=3)
        for name, opts in mods:
            _check_options("blend modifier", name, BLEND_MODIFIERS.get(name), opts, skip=2)

    @classmethod
    def parse(cls, text: "str | BlendSpec") -> "BlendSpec":
        """Read ``RULE[:k=v,...][+MODIFIER[:k=v,...]]...``; unknown names raise RegistryError."""
        if isinstance(text, BlendSpec):
            return text
        parts = [p for p in str(text).split("+")]
        if not parts or not parts[0].strip():
            raise ParameterError(f"blend spec {text!r} has no rule; e.g. 'mean:w=0.7'")
        rule, options = _parse_part(parts[0])
        return cls(rule, options, tuple(_parse_part(p) for p in parts[1:]))

    def __str__(self) -> str:
        return "+".join([_format_part(self.rule, self.options)] + [_format_part(n, o) for n, o in self.modifiers])

    def __call__(self, cell_scores: np.ndarray, image_scores: np.ndarray, cells: CellRows | None = None) -> np.ndarray:
        return blend(cell_scores, image_scores, cells, spec=self)

    def uses(self, modifier: str) -> bool:
        """Whether the modifier named ``modifier`` is part of this spec."""
        return any(name == modifier for name, _ in self.modifiers)


def add_modifier_columns(rows: Any, entry: Any, specs: Sequence[BlendSpec], *,
                         image: np.ndarray | None = None) -> Any:
    """The cell-table ``rows`` of a mask-cache ``entry`` plus the columns the modifiers of ``specs`` read.

    ``border4``: :data:`EDGE_COLUMNS` from the entry's nuclei map (:func:`nucleus_edge_pixels`).
    ``dark``: :data:`DARKNESS_COLUMN` from ``image``, the (H, W, 4) RGBY image, required then
    (:func:`cellcls.signal.entry_cell_darkness`). Other columns are left as they are.
    """
    if any(spec.uses("border4") for spec in specs):
        rows = rows.assign(**nucleus_edge_pixels(entry.nuclei, rows, original_shape=entry.original_shape,
                                                 image_id=entry.image_id))
    if any(spec.uses("dark") for spec in specs):
        if image is None:
            raise ParameterError(f"the 'dark' modifier needs image {entry.image_id}'s channels (image=)")
        from cellcls.signal import entry_cell_darkness

        rows = rows.assign(**{DARKNESS_COLUMN: entry_cell_darkness(image, entry, rows["cell_id"].tolist())})
    return rows


def blend(cell_scores: np.ndarray, image_scores: np.ndarray, cells: CellRows | None = None, *,
          spec: "str | BlendSpec" = "cell") -> np.ndarray:
    """Blend one image's cell scores with its image scores.

    Parameters
    ----------
    cell_scores : (N, 19) float in [0, 1]
        Per-cell confidences, row i = cell-table row i. Not modified.
    image_scores : (19,) float in [0, 1]
        The image-level confidences of the same image.
    cells : cell-table rows of the image (DataFrame or dict of (N,) columns), optional
        Needed by rules/modifiers that read cell measures (original pixels).
    spec : a :class:`BlendSpec` or its text form.

    Returns
    -------
    (N, 19) float32 in [0, 1] (clipped), rows aligned with ``cell_scores``.
    """
    spec = BlendSpec.parse(spec)
    cell = np.asarray(cell_scores)
    n = cell.shape[0] if cell.ndim == 2 else -1
    cell = _probabilities(cell, (max(n, 0), NUM_CLASSES), "cell_scores")
    image = _probabilities(image_scores, (NUM_CLASSES,), "image_scores")
    out = BLEND_RULES.get(spec.rule)(cell, image, cells, **dict(spec.options))
    for name, options in spec.modifiers:
        out = BLEND_MODIFIERS.get(name)(out, cells, **dict(options))
    return np.clip(out, 0.0, 1.0).astype(np.float32)
