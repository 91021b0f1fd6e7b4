"""Sentinel-2 BOA offset: decide, from all the evidence an item carries, what to remove.

Since processing baseline 04.00 (acquisitions from 2022-01-25 on, and every reprocessed
product), ESA's L2A DNs carry ``BOA_ADD_OFFSET`` = +1000: reflectance =
(DN - 1000) / 10000. Providers differ in whether they removed it, and say so in
different, sometimes wrong, ways. geofm reads every piece of evidence, decides, and
records the decision and the reasons per scene (``run.json``, stage ``chip``,
``extra.harmonisation`` and ``extra.harmonisation_detail``).

Evidence:

- **baseline**: ``s2:processing_baseline`` (Earth Search, Planetary Computer),
  ``processing:version`` (Copernicus Data Space), or the ``_N0511_`` part of the product
  id (the item id or ``s2:product_uri``); with none of them, the acquisition date
  (from 2022-01-25: assumed >= 04.00), marked as assumed.
- **declared offset**: ``raster:bands[].offset`` / ``raster:offset`` of the band
  assets: -0.1 says the DNs carry the +1000, 0 says they do not.
- **flag**: ``earthsearch:boa_offset_applied`` (Earth Search v1 ``sentinel-2-l2a``):
  true says Earth Search already subtracted the 1000.
- **data** (checked while chipping): with the +1000 in the DNs, a valid DN below 1000
  is a negative reflectance, rare in any scene; if more than half of the valid DNs of a
  band are below 1000, the offset is not in the data.

Rule (first match wins):

1. baseline < 04.00: nothing to remove (there is no offset in such DNs). A declared
   offset of -0.1 or a true flag contradicts the baseline and is ignored (noted).
2. the flag is present: true -> nothing, false -> remove. Earth Search v1 writes
   ``raster:bands`` offset -0.1 whether or not it applied the offset (its maintainers
   say the flag is the truth, Element84/earth-search#9), so a declared offset that
   disagrees is noted, not followed.
3. a declared offset: -0.1 -> remove (Earth Search C1, CDSE); 0 -> nothing.
4. otherwise (Planetary Computer: ESA's DNs as published, no raster metadata): remove.
5. data guard: when 1-4 say remove but the data show the offset is not there (the
   flag is known to be wrong on some Earth Search v1 items, Element84/earth-search#66,
   #71), nothing is removed and the contradiction is recorded. The guard cannot catch
   the opposite error (offset present, metadata say removed) in bright scenes, where
   harmonised DNs are above 1000 anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from geofm.sensors import S2_BOA_ADD_OFFSET, S2_OFFSET_BASELINE, S2_OFFSET_DATE

_PRODUCT_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")
#: Fraction of valid DNs below the offset above which the data cannot carry it (rule 5).
DATA_GUARD_FRACTION = 0.5
#: Declared offsets (reflectance units) that mean "the DNs carry +1000".
_OFFSET_REFLECTANCE = -S2_BOA_ADD_OFFSET * 1e-4


def version(text: str) -> tuple[int, ...]:
    """``"04.00"`` -> ``(4, 0)``; raises ``ValueError`` for text that is not a version."""
    return tuple(int(p) for p in str(text).split("."))


def baseline_of(props: dict[str, Any], item_id: str) -> tuple[str | None, str | None]:
    """``(baseline, where it came from)`` of a Sentinel-2 item, or ``(None, None)``."""
    for key in ("s2:processing_baseline", "processing:version"):
        value = props.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and value != "":
            try:
                version(str(value))
            except ValueError:
                continue
            return str(value), f"properties.{key}"
    for where, text in (("id", item_id), ("properties.s2:product_uri",
                                          props.get("s2:product_uri"))):
        if isinstance(text, str) and (m := _PRODUCT_BASELINE.search(text)):
            return f"{m[1]}.{m[2]}", f"{where} (_N{m[1]}{m[2]}_)"
    return None, None


@dataclass(frozen=True)
class Harmonisation:
    """What to do to a scene's DNs and why (JSON-able via :meth:`record`).

    Attributes:
        offset_dn: DN to subtract from nonzero reflectance DNs (0 or 1000).
        rule: which rule of the module docstring decided (``"1"`` .. ``"5"``, or
            ``"not sentinel-2"``).
        baseline: the processing baseline used (``None``: not Sentinel-2).
        baseline_source: where it came from (``properties.processing:version``,
            ``id (_N0511_)``, ``date (assumed)``).
        flag: ``earthsearch:boa_offset_applied`` as read (``None``: absent).
        declared_offset: the band assets' declared offset in reflectance (``None``).
        contradictions: evidence that disagreed with the decision.
        data_check: the data guard's finding, once chipping ran it.
    """

    offset_dn: int
    rule: str
    baseline: str | None = None
    baseline_source: str | None = None
    flag: bool | None = None
    declared_offset: float | None = None
    contradictions: tuple[str, ...] = ()
    data_check: str | None = None

    @property
    def note(self) -> str:
        """One line for ``run.json`` and the chip files."""
        if self.offset_dn:
            text = (f"subtracted {self.offset_dn} DN (processing baseline {self.baseline}, "
                    f"from {self.baseline_source}; rule {self.rule}; nonzero DN clipped at 1)")
        elif self.flag and self.rule == "2":
            text = "none (earthsearch:boa_offset_applied is true)"
        elif self.rule == "not sentinel-2":
            text = "none (not Sentinel-2: DNs kept as published)"
        else:
            text = (f"none (processing baseline {self.baseline or 'unknown'}"
                    f"{', from ' + self.baseline_source if self.baseline_source else ''}; "
                    f"rule {self.rule})")
        if self.contradictions:
            text += "; contradictions: " + "; ".join(self.contradictions)
        return text

    def record(self) -> dict[str, Any]:
        """The decision and its evidence as a JSON-able dict."""
        return {"offset_dn": self.offset_dn, "rule": self.rule, "baseline": self.baseline,
                "baseline_source": self.baseline_source, "boa_offset_applied": self.flag,
                "declared_offset": self.declared_offset,
                "contradictions": list(self.contradictions), "data_check": self.data_check,
                "note": self.note}

    def after_data_check(self, fraction_below: float, band: str) -> Harmonisation:
        """Apply rule 5 given the largest fraction of valid DNs below 1000 of any band."""
        finding = (f"{fraction_below:.0%} of the valid {band} DNs are below "
                   f"{S2_BOA_ADD_OFFSET}")
        if self.offset_dn and fraction_below > DATA_GUARD_FRACTION:
            why = (f"rule {self.rule} said subtract {self.offset_dn}, but {finding}: the "
                   "offset is not in the data, nothing subtracted")
            return Harmonisation(0, "5", self.baseline, self.baseline_source, self.flag,
                                 self.declared_offset, (*self.contradictions, why), finding)
        return Harmonisation(self.offset_dn, self.rule, self.baseline, self.baseline_source,
                             self.flag, self.declared_offset, self.contradictions, finding)


def decide(*, props: dict[str, Any], item_id: str, when: datetime,
           declared_offsets: list[float], flag: bool | None) -> Harmonisation:
    """Apply rules 1-4 of the module docstring to one Sentinel-2 item.

    Args:
        props: the item's properties.
        item_id: the item id (may hold ``_N0511_``).
        when: acquisition time (UTC).
        declared_offsets: the reflectance-band assets' declared offsets (reflectance).
        flag: ``earthsearch:boa_offset_applied`` (``None``: absent).

    Returns:
        The decision, before the data guard (rule 5) that chipping applies.
    """
    baseline, source = baseline_of(props, item_id)
    if baseline is None:
        after = when.date() >= date.fromisoformat(S2_OFFSET_DATE)
        baseline = S2_OFFSET_BASELINE if after else "03.01"
        source = f"date (assumed: acquired {'on/after' if after else 'before'} {S2_OFFSET_DATE})"
    declared = declared_offsets[0] if declared_offsets else None
    carries = None if declared is None else abs(declared - _OFFSET_REFLECTANCE) < 1e-6
    notes: list[str] = []
    if version(baseline) < version(S2_OFFSET_BASELINE):
        if carries:
            notes.append(f"raster offset {declared} ignored: baseline {baseline} DNs carry no "
                         "offset")
        if flag:
            notes.append("earthsearch:boa_offset_applied true ignored: baseline "
                         f"{baseline} has no offset to apply")
        return Harmonisation(0, "1", baseline, source, flag, declared, tuple(notes))
    if flag is not None:
        if carries is not None and carries == flag:
            notes.append(f"raster offset {declared} disagrees with earthsearch:"
                         f"boa_offset_applied {str(flag).lower()}; the flag decides "
                         "(Element84/earth-search#9)")
        return Harmonisation(0 if flag else S2_BOA_ADD_OFFSET, "2", baseline, source, flag,
                             declared, tuple(notes))
    if carries is not None:
        return Harmonisation(S2_BOA_ADD_OFFSET if carries else 0, "3", baseline, source,
                             flag, declared)
    return Harmonisation(S2_BOA_ADD_OFFSET, "4", baseline, source, flag, declared)

