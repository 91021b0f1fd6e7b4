"""Each chip's whole series assessed block by block, from published and new observations.

An analysis assesses a chip over all its observations: the published rows an update
keeps and the rows it scores now (a reference has only the latter). Rather than one
``[chip, date]`` layout of every chip (hundreds of MB of fresh memory at 100k chips x
60 dates, sorted and gathered in full), :class:`ChipRows` finds each chip's rows in
both sets once, and :func:`assess_chips` gathers, lays out and assesses
:data:`BLOCK` chips at a time: every array but the per-chip results is a block's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geofm.analyze.change import SeasonalFit
from geofm.analyze.chipstate import ChipState, ranges, walk
from geofm.analyze.passes import Padded
from geofm.analyze.update import Core, chip_date_order, take_two

#: Chips assessed together (bounds the ``[chips, dates]`` arrays of a block).
BLOCK = 8192


def _by_chip(chip: np.ndarray, n_chips: int) -> tuple[np.ndarray | None, np.ndarray]:
    """``(order, bounds)``: rows sorted by chip (None: already) and each chip's range.

    The rows of chip ``c`` are ``order[bounds[c]:bounds[c + 1]]`` (in their order).
    """
    bounds = np.concatenate([[0], np.cumsum(np.bincount(chip, minlength=n_chips))])
    if chip.size < 2 or bool(np.all(chip[1:] >= chip[:-1])):
        return None, bounds
    return np.argsort(chip, kind="stable"), bounds


class ChipRows:
    """Where each chip's observations are among ``old`` (published) then ``new`` rows.

    Row ``r`` is ``old`` row ``r`` below ``len(old.chip)``, else ``new`` row
    ``r - len(old.chip)``; both hold chip codes in ``[0, n_chips)``.
    """

    def __init__(self, old: Core, new: Core, n_chips: int) -> None:
        self.old, self.new = old, new
        self._index = [_by_chip(old.chip, n_chips), _by_chip(new.chip, n_chips)]

    def rows(self, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``chips`` (int ``[b]``, ascending) by chip, then date.

        Returns int64 rows and each row's position in ``chips`` (both ``[m]``).
        """
        rows, where = [], []
        for (order, bounds), offset in zip(self._index, (0, self.old.chip.size), strict=True):
            starts = bounds[chips]
            counts = bounds[chips + 1] - starts
            at = ranges(starts, counts)
            rows.append((at if order is None else order[at]) + offset)
            where.append(np.repeat(np.arange(chips.size), counts))
        row, pos = np.concatenate(rows), np.concatenate(where)
        order = chip_date_order(pos, take_two(self.old.ns, self.new.ns, row))
        return row[order], pos[order]

    def take(self, chips: np.ndarray) -> tuple[np.ndarray, Core]:
        """``(rows, obs)``: the rows of ``chips`` and their observations, by chip then date.

        ``obs.chip`` is each row's position in ``chips``.
        """
        row, pos = self.rows(chips)
        return row, Core.take_pair(self.old, self.new, row, chip=pos)


@dataclass
class Assessed:
    """The assessment of some chips (``[n]``, in the order they were given).

    Attributes:
        out: the rule's per-chip results (:func:`~geofm.analyze.chipstate.walk`:
            ``status``, ``change``, ``change_index``, ``confirm_index``, ``magnitude``,
            ``n_observations``, ``n_monitor``; no ``anomaly``).
        change_ns: int64 date of the change's first observation (ns since the epoch,
            UTC; 0 without a change).
        confirm_ns: int64 date of the observation that confirmed it (0: none).
        confirm_scene: the scene of that observation (None: none).
        state: the chips' rule state after these observations.
    """

    out: dict[str, np.ndarray]
    change_ns: np.ndarray
    confirm_ns: np.ndarray
    confirm_scene: np.ndarray
    state: ChipState

    @classmethod
    def concat(cls, parts: list[Assessed]) -> Assessed:
        """The assessments of several sets of chips, one after the other."""
        return cls(out={k: np.concatenate([p.out[k] for p in parts]) for k in parts[0].out},
                   change_ns=np.concatenate([p.change_ns for p in parts]),
                   confirm_ns=np.concatenate([p.confirm_ns for p in parts]),
                   confirm_scene=np.concatenate([p.confirm_scene for p in parts]),
                   state=ChipState.concat([p.state for p in parts]))

    def take(self, idx: np.ndarray) -> Assessed:
        """The assessment of the chips at ``idx``."""
        return Assessed(out={k: v[idx] for k, v in self.out.items()},
                        change_ns=self.change_ns[idx], confirm_ns=self.confirm_ns[idx],
                        confirm_scene=self.confirm_scene[idx], state=self.state.take(idx))


def assess_chips(rows: ChipRows, chips: np.ndarray, fit: SeasonalFit, anomaly: np.ndarray,
                 prev: ChipState, *, monitor_start_ns: int, threshold: float,
                 consecutive: int, block: int = BLOCK) -> Assessed:
    """Assess ``chips`` (int ``[n]``, ascending) from their state ``prev``, a block at a time.

    ``rows`` holds the chips' observations after the state (:meth:`ChipState.empty`:
    all of them); ``fit``: every chip's seasonal fit (rows = chip codes); ``anomaly``:
    bool, indexed like ``rows``' rows, where each assessed row's flag is written (the
    other rows are left as they are).
    """
    parts: list[Assessed] = []
    for lo in range(0, chips.size, block):
        blk = chips[lo:lo + block]
        row, obs = rows.take(blk)
        grid = Padded(obs.chip, blk.size, np.ones(obs.chip.size, dtype=bool))
        names = np.asarray([*obs.scenes, None], dtype=object)
        state, out = walk(prev.take(np.arange(lo, lo + blk.size)),
                          grid.take(obs.resid.astype(np.float64), np.nan), grid.valid,
                          grid.take(np.isfinite(obs.sig), False),
                          grid.take(obs.ns >= monitor_start_ns, False), grid.take(obs.ns, 0),
                          names[grid.take(obs.scene, -1)], fit.fitted[blk],
                          threshold=threshold, consecutive=consecutive)
        anomaly[row] = grid.gather(out.pop("anomaly"))
        change = out["change"]
        parts.append(Assessed(
            out=out, change_ns=np.where(change, state.change_ns, 0),
            confirm_ns=np.where(change, state.confirm_ns, 0),
            confirm_scene=np.where(change, state.confirm_scene, np.array(None)), state=state))
    if not parts:  # no chip: empty results of the same kinds
        none = np.zeros((0, 0), bool)
        state, out = walk(ChipState.empty(0), np.zeros((0, 0)), none, none, none,
                          np.zeros((0, 0), np.int64), np.zeros((0, 0), object),
                          np.zeros(0, bool), threshold=threshold, consecutive=consecutive)
        del out["anomaly"]
        return Assessed(out=out, change_ns=np.zeros(0, np.int64),
                        confirm_ns=np.zeros(0, np.int64),
                        confirm_scene=np.zeros(0, dtype=object), state=state)
    return parts[0] if len(parts) == 1 else Assessed.concat(parts)


def take_fit(fit: SeasonalFit, chips: np.ndarray | slice) -> SeasonalFit:
    """The fits of ``chips`` (bool ``[C]``, int indexes or a slice)."""
    return SeasonalFit(coef=fit.coef[chips], intercept=fit.intercept[chips],
                       scale=fit.scale[chips], fitted=fit.fitted[chips],
                       n_baseline=fit.n_baseline[chips])
