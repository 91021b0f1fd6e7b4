"""The one place that knows each sensor's bands.

Per band: its name (the STAC ``eo:bands`` common name, which is also Earth Search's
asset key), the providers' own band names (``B02``, ``SR_B2``), native resolution (m),
centre wavelength (um), nodata, DN scale/offset to reflectance, and Clay v1.5's
normalisation mean/std (in the sensor's DN units; dB for Sentinel-1). Bands Clay was not
trained on carry no statistics (``mean is None``) and cannot be fed to the encoder.

Per sensor: the STAC collections that hold it (:func:`sensor_for_collection`) and its
mask band (Sentinel-2 ``scl`` classes, Landsat ``qa_pixel`` bits). Which asset of an
item holds a band is decided by :mod:`geofm.chip.assets` from the item's metadata, with
these names as the fallback.

Example::

    s2 = get_sensor("sentinel-2-l2a")
    bands = s2.select(["blue", "green", "red", "nir"])
    mean, std = s2.normalisation(["blue", "green", "red", "nir"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from geofm.exceptions import SensorError


@dataclass(frozen=True)
class Band:
    """One spectral band (or polarisation) of a sensor.

    Attributes:
        name: STAC common name (Earth Search asset key), e.g. ``"nir08"``; what users,
            chip files and Clay's statistics call the band.
        resolution: native ground sampling distance, metres.
        wavelength: centre wavelength, micrometres (for SAR: Clay's nominal value).
        nodata: nodata value of the asset (``None`` if the asset has none).
        mean: Clay normalisation mean in DN (``None``: band not used by Clay).
        std: Clay normalisation standard deviation in DN.
        scale: multiply DN by this to get reflectance (after removing ``offset_dn``).
        is_mask: a classification layer (e.g. Sentinel-2 SCL), not a reflectance.
        aliases: the providers' own names of the band (``eo:bands`` ``name``, asset
            keys), e.g. ``("B02",)``; ``--bands`` accepts them too.
        offset: add this to ``DN * scale`` to get reflectance (Landsat C2 L2: -0.2).
    """

    name: str
    resolution: float
    wavelength: float | None
    nodata: float | None = 0
    mean: float | None = None
    std: float | None = None
    scale: float = 1.0
    is_mask: bool = False
    aliases: tuple[str, ...] = ()
    offset: float = 0.0

    @property
    def names(self) -> tuple[str, ...]:
        """The band's name and its aliases."""
        return (self.name, *self.aliases)

    @property
    def clay_ready(self) -> bool:
        """True if Clay has normalisation statistics and a wavelength for this band."""
        return self.mean is not None and self.std is not None and self.wavelength is not None


@dataclass(frozen=True)
class Sensor:
    """A sensor/collection and its bands.

    Attributes:
        name: collection name, e.g. ``"sentinel-2-l2a"``.
        gsd: the resolution Clay sees the data at, metres.
        bands: the bands in the collection's conventional order.
        default_bands: bands used when the user names none.
        clay_bands: the bands Clay was trained on for this sensor (``--bands all``).
        collections: STAC collection ids whose items are this sensor's.
        mask_band: the band chip screening reads clouds and nodata from (``None``: none).
        not_chipped: why ``geofm chip`` refuses this sensor's items (``None``: it chips
            them). The sensor's statistics still serve the encoder.
    """

    name: str
    gsd: float
    bands: tuple[Band, ...]
    default_bands: tuple[str, ...]
    clay_bands: tuple[str, ...]
    collections: tuple[str, ...] = ()
    mask_band: str | None = None
    not_chipped: str | None = None

    @property
    def band_names(self) -> tuple[str, ...]:
        """All band names (asset keys)."""
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> Band:
        """Return the band called ``name`` (or an alias, e.g. ``B02``, any case).

        Raises:
            SensorError: no band has that name; the message lists the valid ones.
        """
        for band in self.bands:
            if band.name == name:
                return band
        wanted = name.strip().lower()
        for band in self.bands:
            if any(n.lower() == wanted for n in band.names):
                return band
        aliases = ", ".join(f"{b.aliases[0]}={b.name}" for b in self.bands if b.aliases)
        raise SensorError(
            f"unknown band {name!r} for sensor {self.name!r}; valid bands: "
            f"{', '.join(self.band_names)}" + (f" (or the provider names {aliases})"
                                               if aliases else "")
        )

    def resolve(self, names: str | Iterable[str] | None) -> tuple[str, ...]:
        """Expand a band selection: ``None`` = defaults, ``"all"`` = Clay's bands.

        Accepts a comma-separated string or a sequence of band names or aliases
        (``"blue,B03"``); validates every name and returns the band names
        (``("blue", "green")``).
        """
        if names is None:
            return self.default_bands
        if isinstance(names, str):
            if names.strip().lower() == "all":
                return self.clay_bands
            names = [n.strip() for n in names.split(",") if n.strip()]
        resolved = tuple(names)
        if not resolved:
            raise SensorError(f"empty band list for sensor {self.name!r}; "
                              f"valid bands: {', '.join(self.band_names)}")
        return tuple(self.band(name).name for name in resolved)

    def select(self, names: Sequence[str]) -> tuple[Band, ...]:
        """The :class:`Band` objects for ``names``, in that order."""
        return tuple(self.band(n) for n in names)

    def _clay_bands(self, names: Sequence[str]) -> tuple[Band, ...]:
        bands = self.select(names)
        missing = [b.name for b in bands if not b.clay_ready]
        if missing:
            raise SensorError(
                f"band(s) {', '.join(missing)} of {self.name!r} have no Clay normalisation "
                f"statistics; use bands from: {', '.join(self.clay_bands)}"
            )
        return bands

    def normalisation(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Clay mean and std for ``names``: two float32 arrays [C], in DN."""
        bands = self._clay_bands(names)
        return (np.array([b.mean for b in bands], dtype=np.float32),
                np.array([b.std for b in bands], dtype=np.float32))

    def wavelengths(self, names: Sequence[str]) -> np.ndarray:
        """Centre wavelengths for ``names``: float32 [C], micrometres."""
        return np.array([b.wavelength for b in self._clay_bands(names)], dtype=np.float32)


def _s2() -> Sensor:
    r = 1e-4
    bands = (
        Band("coastal", 60, 0.443, scale=r, aliases=("B01",)),
        Band("blue", 10, 0.493, mean=1105, std=1809, scale=r, aliases=("B02",)),
        Band("green", 10, 0.56, mean=1355, std=1757, scale=r, aliases=("B03",)),
        Band("red", 10, 0.665, mean=1552, std=1888, scale=r, aliases=("B04",)),
        Band("rededge1", 20, 0.704, mean=1887, std=1870, scale=r, aliases=("B05",)),
        Band("rededge2", 20, 0.74, mean=2422, std=1732, scale=r, aliases=("B06",)),
        Band("rededge3", 20, 0.783, mean=2630, std=1697, scale=r, aliases=("B07",)),
        Band("nir", 10, 0.842, mean=2743, std=1742, scale=r, aliases=("B08",)),
        Band("nir08", 20, 0.865, mean=2785, std=1648, scale=r, aliases=("B8A",)),
        Band("nir09", 60, 0.945, scale=r, aliases=("B09",)),
        Band("swir16", 20, 1.61, mean=2388, std=1470, scale=r, aliases=("B11",)),
        Band("swir22", 20, 2.19, mean=1835, std=1379, scale=r, aliases=("B12",)),
        Band("scl", 20, None, nodata=0, is_mask=True, aliases=("SCL",)),
    )
    return Sensor(
        name="sentinel-2-l2a", gsd=10, bands=bands,
        default_bands=("blue", "green", "red", "nir"),
        clay_bands=("blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                    "swir16", "swir22"),
        collections=("sentinel-2-l2a", "sentinel-2-c1-l2a", "sentinel-s2-l2a-cogs"),
        mask_band="scl",
    )


def _landsat() -> Sensor:
    r, o = 2.75e-5, -0.2
    # aliases: USGS asset keys / eo:bands names of OLI (SR_B*, OLI_B*). A bare B2 is not
    # one: it is blue on OLI but green on ETM+ (USGS Landsat 7 items), so such
    # items are matched by common name and users name the band blue or SR_B2.
    bands = (
        Band("coastal", 30, 0.44, scale=r, offset=o, aliases=("SR_B1", "OLI_B1")),
        Band("blue", 30, 0.48, mean=12474, std=10144, scale=r, offset=o,
             aliases=("SR_B2", "OLI_B2")),
        Band("green", 30, 0.56, mean=13310, std=9408, scale=r, offset=o,
             aliases=("SR_B3", "OLI_B3")),
        Band("red", 30, 0.65, mean=13705, std=9578, scale=r, offset=o,
             aliases=("SR_B4", "OLI_B4")),
        Band("nir08", 30, 0.86, mean=17801, std=8277, scale=r, offset=o,
             aliases=("SR_B5", "OLI_B5")),
        Band("swir16", 30, 1.6, mean=14615, std=5300, scale=r, offset=o,
             aliases=("SR_B6", "OLI_B6")),
        Band("swir22", 30, 2.2, mean=12701, std=4522, scale=r, offset=o,
             aliases=("SR_B7", "OLI_B7")),
        Band("qa_pixel", 30, None, nodata=1, is_mask=True, aliases=("QA_PIXEL",)),
    )
    return Sensor(
        name="landsat-c2-l2", gsd=30, bands=bands,
        default_bands=("blue", "green", "red", "nir08"),
        clay_bands=("red", "green", "blue", "nir08", "swir16", "swir22"),
        collections=("landsat-c2-l2", "landsat-c2l2-sr"),
        mask_band="qa_pixel",
    )


def _naip() -> Sensor:
    bands = (
        Band("red", 1, 0.65, mean=110.16, std=47.23),
        Band("green", 1, 0.56, mean=115.41, std=39.82),
        Band("blue", 1, 0.48, mean=98.15, std=35.43),
        Band("nir", 1, 0.842, mean=139.04, std=49.86),
    )
    return Sensor(name="naip", gsd=1, bands=bands, default_bands=("red", "green", "blue", "nir"),
                  clay_bands=("red", "green", "blue", "nir"), collections=("naip",),
                  not_chipped="NAIP items hold all four bands in one multi-band 'image' "
                              "asset (geofm reads one band per asset) and name no tile "
                              "grid, so chip ids would not be stable")


def _s1() -> Sensor:
    bands = (
        Band("vv", 10, 3.5, nodata=None, mean=-12.113, std=8.314),
        Band("vh", 10, 4.0, nodata=None, mean=-18.673, std=8.017),
    )
    return Sensor(name="sentinel-1-rtc", gsd=10, bands=bands, default_bands=("vv", "vh"),
                  clay_bands=("vv", "vh"), collections=("sentinel-1-rtc",),
                  not_chipped="Sentinel-1 RTC items hold linear backscatter while Clay's "
                              "statistics are in dB, and geofm does not convert it (the "
                              "embeddings would be silently wrong)")


SENSORS: dict[str, Sensor] = {s.name: s for s in (_s2(), _landsat(), _naip(), _s1())}

#: Sentinel-2 scene classification (SCL) codes.
SCL_NO_DATA = 0
SCL_CLOUD_SHADOW = 3
SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_WATER = 4, 5, 6
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10
SCL_SNOW = 11
#: SCL classes counted as cloud by the chip screening (shadow, medium/high cloud, cirrus).
SCL_CLOUDY = (SCL_CLOUD_SHADOW, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS)
#: Processing baseline from which Sentinel-2 L2A DNs carry a +1000 offset.
S2_OFFSET_BASELINE = "04.00"
S2_BOA_ADD_OFFSET = 1000
#: First acquisition day ESA processed with baseline 04.00 (used when an item names none).
S2_OFFSET_DATE = "2022-01-25"

#: Landsat Collection 2 ``QA_PIXEL`` bits: fill (nodata), and the bits counted as cloud by
#: the chip screening (dilated cloud, cirrus, cloud, cloud shadow); snow is optional.
LANDSAT_QA_FILL = 0
LANDSAT_QA_CLOUDY_BITS = (1, 2, 3, 4)
LANDSAT_QA_SNOW = 5


def sensor_for_collection(collection: str | None) -> Sensor | None:
    """The sensor whose STAC collections include ``collection`` (``None`` if none does)."""
    for sensor in SENSORS.values():
        if collection is not None and (collection == sensor.name
                                       or collection in sensor.collections):
            return sensor
    return None


def get_sensor(name: str) -> Sensor:
    """Return the :class:`Sensor` called ``name``; raise :class:`SensorError` listing valid ones."""
    try:
        return SENSORS[name]
    except KeyError:
        raise SensorError(
            f"unknown sensor {name!r}; valid sensors: {', '.join(sorted(SENSORS))}"
        ) from None
