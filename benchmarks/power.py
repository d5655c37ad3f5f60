"""Energy meters for benchmark runs: NVML, Intel RAPL, hwmon power sensors, an external meter's CSV log, and a
documented board profile for boards without a meter (labelled ``estimated``, never presented as measured).

Every meter has ``start()``/``stop() -> Reading`` and names its ``source``. A meter that cannot read raises
:class:`MeterUnavailable` with the reason; the report then says ``unavailable: <reason>``, never 0. All sysfs
roots are constructor arguments so tests can build fake trees. The readers are written by hand: each is a few
lines of sysfs or CSV reading, and no maintained library covers all four with this interface.
"""
from __future__ import annotations

import csv
import datetime as _dt
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.errors import EdgeError, look_up_option

POWERCAP_ROOT = Path("/sys/class/powercap")
HWMON_ROOT = Path("/sys/class/hwmon")
DEVICE_TREE = Path("/proc/device-tree")

METERS = ("auto", "none", "nvml", "rapl", "hwmon", "csv", "estimate")


class MeterUnavailable(Exception):
    """The meter cannot read here; ``str(exc)`` is the reason, one line."""


@dataclass(frozen=True)
class Reading:
    energy_j: float
    duration_s: float
    t_start: float  # unix time, the run's start as the meter saw it
    t_end: float
    samples: int | None = None  # sampled meters: readings integrated


@dataclass(frozen=True)
class BoardProfile:
    """Published whole-board power of a board without a meter; used only for labelled estimates."""

    name: str
    description: str
    idle_w: float
    load_w: float
    reference: str
    compatible: tuple[str, ...] = ()  # device-tree "compatible" strings that identify the board's SoC


BOARD_PROFILES: dict[str, BoardProfile] = {p.name: p for p in [
    BoardProfile("rk3399", "Rockchip RK3399 development board (2x Cortex-A72 + 4x Cortex-A53)", idle_w=3.6,
                 load_w=9.6, reference="Laibacher et al., M2U-Net, CVPRW 2019 (seeds/002): 9.6 W measured during "
                 "inference, 3.6 W idle", compatible=("rockchip,rk3399",)),
]}


class Meter:
    """Base class: ``name``, ``kind`` ("measured" or "estimated"), ``source`` (what exactly is read)."""

    name = "meter"
    kind = "measured"
    source = ""
    idle_w: float | None = None  # a profile's documented idle power (estimates only)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> Reading:
        raise NotImplementedError

    def probe(self) -> None:
        """Raise :class:`MeterUnavailable` when the meter cannot read here."""
        self.start()
        self.stop()


class UnavailableMeter(Meter):
    """Stands in for a meter that cannot read; every use raises with the reason."""

    kind = "unavailable"

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason, self.source = name, reason, ""

    def start(self) -> None:
        raise MeterUnavailable(self.reason)

    def stop(self) -> Reading:
        raise MeterUnavailable(self.reason)


def _read_int(path: Path, what: str) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError:
        raise MeterUnavailable(f"{path} is not readable ({what}; permission denied)") from None
    except FileNotFoundError:
        raise MeterUnavailable(f"{path} is missing ({what})") from None
    except (OSError, ValueError) as exc:
        raise MeterUnavailable(f"{path} could not be read as an integer ({what}: {exc})") from None


class RaplMeter(Meter):
    """Intel RAPL package energy (``intel-rapl:N/energy_uj``, microjoules), summed over packages.

    The counter wraps at ``max_energy_range_uj``; one wrap per window is corrected (at 200 W a 262 kJ range
    wraps every 20 minutes). Sub-domains (``intel-rapl:N:M``, core/uncore/dram) are inside the package figure
    and are not added again. Since Linux 5.10 ``energy_uj`` is readable by root only (CVE-2020-8694).
    """

    name = "rapl"

    def __init__(self, root: str | Path = POWERCAP_ROOT) -> None:
        self.root = Path(root)
        self._start: list[int] | None = None
        self._t0 = self._p0 = 0.0

    def _domains(self) -> list[Path]:
        if not self.root.is_dir():
            raise MeterUnavailable(f"no {self.root} (no powercap driver: not an Intel/AMD x86 host, or a VM or "
                                   "container that hides it)")
        doms = sorted(d for d in self.root.glob("intel-rapl:*") if re.fullmatch(r"intel-rapl:\d+", d.name))
        if not doms:
            raise MeterUnavailable(f"no RAPL package domains (intel-rapl:N) under {self.root}")
        return doms

    def _read(self, doms: list[Path]) -> list[int]:
        out = []
        for d in doms:
            f = d / "energy_uj"
            try:
                out.append(int(f.read_text().strip()))
            except PermissionError:
                raise MeterUnavailable(f"{f} is readable only by root since Linux 5.10 (CVE-2020-8694); run as "
                                       f"root or grant read access (sudo chmod o+r {self.root}/intel-rapl:*/energy_uj)"
                                       ) from None
            except FileNotFoundError:
                raise MeterUnavailable(f"{f} is missing (RAPL domain without an energy counter)") from None
            except (OSError, ValueError) as exc:
                raise MeterUnavailable(f"{f} could not be read ({exc})") from None
        return out

    def start(self) -> None:
        doms = self._domains()
        names = []
        for d in doms:
            try:
                names.append((d / "name").read_text().strip())
            except OSError:
                names.append(d.name)
        self.source = f"RAPL {' + '.join(names)} energy counters ({self.root}/intel-rapl:N/energy_uj)"
        self._doms = doms
        self._t0, self._p0 = time.time(), time.perf_counter()
        self._start = self._read(doms)

    def stop(self) -> Reading:
        if self._start is None:
            raise MeterUnavailable("RAPL meter stopped before it was started")
        end = self._read(self._doms)
        t1, dur = time.time(), time.perf_counter() - self._p0
        total_uj = 0
        for d, e0, e1 in zip(self._doms, self._start, end):
            if e1 >= e0:
                total_uj += e1 - e0
            else:
                rng = _read_int(d / "max_energy_range_uj", "needed to correct the counter's wrap-around")
                total_uj += rng - e0 + e1
        self._start = None
        return Reading(total_uj / 1e6, dur, self._t0, t1)


def integrate(ts: list[float], ws: list[float], t0: float, t1: float) -> float:
    """Trapezoid integral of the piecewise-linear power curve (ts, ws) over [t0, t1], in joules.

    ``ts`` must be sorted and cover [t0, t1]; the curve is interpolated linearly at the window's ends.
    """
    if t1 <= t0:
        return 0.0

    def at(t: float) -> float:
        for i in range(1, len(ts)):
            if ts[i] >= t:
                a, b = ts[i - 1], ts[i]
                return ws[i] if b == a else ws[i - 1] + (ws[i] - ws[i - 1]) * (t - a) / (b - a)
        return ws[-1]

    pts = [(t0, at(t0))] + [(t, w) for t, w in zip(ts, ws) if t0 < t < t1] + [(t1, at(t1))]
    return sum((pts[i][0] - pts[i - 1][0]) * (pts[i][1] + pts[i - 1][1]) / 2 for i in range(1, len(pts)))


class HwmonMeter(Meter):
    """Linux hwmon power sensors (INA219/INA226/INA3221...: ``power*_input`` in microwatts), sampled in a
    background thread and integrated with the trapezoid rule. All ``power*_input`` channels of the matching
    devices are summed; pick the device with ``hwmon:NAME`` (its ``name`` file) when a board has several."""

    name = "hwmon"

    def __init__(self, root: str | Path = HWMON_ROOT, device: str | None = None, interval_s: float = 0.02) -> None:
        self.root, self.device, self.interval_s = Path(root), device, interval_s
        self._thread: threading.Thread | None = None

    def _channels(self) -> list[Path]:
        if not self.root.is_dir():
            raise MeterUnavailable(f"no {self.root} (no hwmon drivers loaded)")
        seen, chans, used = [], [], []
        for d in sorted(self.root.glob("hwmon*")):
            try:
                name = (d / "name").read_text().strip()
            except OSError:
                continue  # a hwmon device without a name file cannot be matched or reported
            seen.append(name)
            if self.device is not None and name != self.device:
                continue
            found = sorted(d.glob("power*_input"))
            if found:
                chans.extend(found)
                used.append(f"{name} ({d.name}: {', '.join(c.name for c in found)})")
        if not chans:
            want = f"named '{self.device}' " if self.device else ""
            raise MeterUnavailable(f"no hwmon power sensor {want}with power*_input under {self.root}"
                                   + (f" (devices: {', '.join(seen)})" if seen else ""))
        self.source = (f"hwmon {'; '.join(used)} under {self.root}, power*_input sampled every "
                       f"{self.interval_s * 1e3:g} ms, trapezoid-integrated")
        return chans

    def _sample(self) -> float:
        total = 0
        for c in self._chans:
            total += _read_int(c, "hwmon power in microwatts")
        return total / 1e6

    def start(self) -> None:
        self._chans = self._channels()
        self._ts: list[float] = []
        self._ws: list[float] = []
        self._error: MeterUnavailable | None = None
        self._t0 = time.time()
        self._take()
        if self._error:
            raise self._error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hwmon-sampler", daemon=True)
        self._thread.start()

    def _take(self) -> None:
        try:
            w = self._sample()
        except MeterUnavailable as exc:
            self._error = exc
            return
        self._ts.append(time.perf_counter())
        self._ws.append(w)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s) and self._error is None:
            self._take()

    def stop(self) -> Reading:
        if self._thread is None:
            raise MeterUnavailable("hwmon meter stopped before it was started")
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._take()
        if self._error:
            raise self._error
        ts, ws = self._ts, self._ws
        return Reading(integrate(ts, ws, ts[0], ts[-1]), ts[-1] - ts[0], self._t0, time.time(), len(ts))


def _parse_time(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"timestamp {text!r} is neither unix seconds nor ISO 8601") from None


_TIME_COLS = ("timestamp", "time", "unix_time", "t")
_WATT_COLS = ("watts", "power_w", "power", "w")


def read_power_log(path: str | Path) -> tuple[list[float], list[float]]:
    """(unix times, watts) from a CSV with a header naming a timestamp and a watts column, sorted by time.

    Timestamps are unix seconds or ISO 8601 (naive ones are local time)."""
    p = Path(path)
    try:
        with open(p, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise MeterUnavailable(f"meter log {p} does not exist") from None
    except OSError as exc:
        raise MeterUnavailable(f"meter log {p} cannot be read ({exc.strerror})") from None
    if not rows:
        raise MeterUnavailable(f"meter log {p} is empty")
    header = [h.strip().lower() for h in rows[0]]
    ti = next((header.index(c) for c in _TIME_COLS if c in header), None)
    wi = next((header.index(c) for c in _WATT_COLS if c in header), None)
    if ti is None or wi is None:
        raise MeterUnavailable(f"meter log {p} needs a header with a timestamp and a watts column "
                               f"(got {', '.join(header)})")
    pts = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            pts.append((_parse_time(row[ti]), float(row[wi])))
        except (IndexError, ValueError) as exc:
            raise MeterUnavailable(f"meter log {p} line {n} is not timestamp,watts ({exc}): {','.join(row)}") from None
    pts.sort()
    return [t for t, _ in pts], [w for _, w in pts]


class CsvLogMeter(Meter):
    """An external meter's log (timestamp,watts), aligned to the run's wall-clock start/end and integrated
    with the trapezoid rule. The meter's clock must agree with this machine's (NTP); the log must cover the
    whole run when ``stop()`` reads it."""

    name = "csv"

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path, self.clock = Path(path), clock
        self.source = f"external meter log {self.path} (timestamp,watts; trapezoid over the run's window)"
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = self.clock()

    def stop(self) -> Reading:
        if self._t0 is None:
            raise MeterUnavailable("CSV meter stopped before it was started")
        t0, t1 = self._t0, self.clock()
        self._t0 = None
        return self.energy_between(t0, t1)

    def energy_between(self, t0: float, t1: float) -> Reading:
        ts, ws = read_power_log(self.path)
        if len(ts) < 2 or ts[0] > t0 or ts[-1] < t1:
            span = f"{ts[0]:.3f}..{ts[-1]:.3f}" if ts else "nothing"
            raise MeterUnavailable(f"meter log {self.path} covers {span}, not the run {t0:.3f}..{t1:.3f} (unix s); "
                                   "check the meter's clock and that the log was complete")
        inside = sum(1 for t in ts if t0 <= t <= t1)
        return Reading(integrate(ts, ws, t0, t1), t1 - t0, t0, t1, inside)


class NvmlMeter(Meter):
    """NVIDIA GPU energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since driver load; Volta
    and newer), read before and after. GPU only: the board's CPU, memory and fans are not included."""

    name = "nvml"

    def __init__(self, index: int = 0, nvml: Any = None) -> None:
        self.index, self._nvml = index, nvml
        self._e0: int | None = None

    def _lib(self):
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                raise MeterUnavailable("pynvml is not installed (pip install nvidia-ml-py)") from None
            self._nvml = pynvml
        return self._nvml

    def _energy_mj(self) -> int:
        nv = self._lib()
        try:
            nv.nvmlInit()
            h = nv.nvmlDeviceGetHandleByIndex(self.index)
            e = int(nv.nvmlDeviceGetTotalEnergyConsumption(h))
            name = nv.nvmlDeviceGetName(h)
        except Exception as exc:  # pynvml.NVMLError subclasses: no driver, no GPU, not supported
            raise MeterUnavailable(f"NVML cannot read GPU {self.index}'s energy counter ({exc})") from None
        name = name if isinstance(name, str) else name.decode()
        self.source = f"NVML total energy counter of GPU {self.index} ({name})"
        return e

    def start(self) -> None:
        self._e0 = self._energy_mj()
        self._t0, self._p0 = time.time(), time.perf_counter()

    def stop(self) -> Reading:
        if self._e0 is None:
            raise MeterUnavailable("NVML meter stopped before it was started")
        e1 = self._energy_mj()
        dur = time.perf_counter() - self._p0
        e0, self._e0 = self._e0, None
        return Reading((e1 - e0) / 1e3, dur, self._t0, time.time())


class EstimateMeter(Meter):
    """Energy = the board profile's published power under inference x the run's duration. An estimate."""

    name = "estimate"
    kind = "estimated"

    def __init__(self, profile: BoardProfile) -> None:
        self.profile = profile
        self.idle_w = profile.idle_w
        self.source = (f"estimate from board profile '{profile.name}': {profile.load_w} W under inference, "
                       f"{profile.idle_w} W idle ({profile.reference})")
        self._p0: float | None = None

    def start(self) -> None:
        self._t0, self._p0 = time.time(), time.perf_counter()

    def stop(self) -> Reading:
        if self._p0 is None:
            raise MeterUnavailable("estimate stopped before it was started")
        dur = time.perf_counter() - self._p0
        self._p0 = None
        return Reading(self.profile.load_w * dur, dur, self._t0, time.time())


def detect_board(device_tree: str | Path = DEVICE_TREE) -> BoardProfile | None:
    """The board profile whose SoC this machine's device tree names, if any."""
    try:
        compat = (Path(device_tree) / "compatible").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for p in BOARD_PROFILES.values():
        if any(c in compat for c in p.compatible):
            return p
    return None


def create_meter(spec: str | None, device: str = "cpu", *, powercap_root: str | Path = POWERCAP_ROOT,
                 hwmon_root: str | Path = HWMON_ROOT, device_tree: str | Path = DEVICE_TREE,
                 nvml: Any = None) -> Meter:
    """A meter from ``NAME[:ARG]``: ``nvml[:GPU]``, ``rapl[:POWERCAP_ROOT]``, ``hwmon[:DEVICE_NAME]``,
    ``csv:PATH``, ``estimate[:PROFILE]``, ``none``, or ``auto`` (NVML for a CUDA case; else RAPL, hwmon,
    then the board profile this machine's device tree names). Unknown names raise :class:`EdgeError`; a meter
    that cannot read is returned anyway and says why when used."""
    spec = (spec or "auto").strip()
    name, _, arg = spec.partition(":")
    name = look_up_option(name.strip().lower(), METERS, "meter")
    arg = arg.strip() or None
    if name == "none":
        return UnavailableMeter("none", "no meter selected (choose one with --meter: "
                                        f"{', '.join(m for m in METERS if m != 'none')})")
    if name == "nvml":
        try:
            index = int(arg) if arg else 0
        except ValueError:
            raise EdgeError(f"--meter nvml:GPU takes a GPU index, got '{arg}'") from None
        return NvmlMeter(index, nvml)
    if name == "rapl":
        return RaplMeter(arg or powercap_root)
    if name == "hwmon":
        return HwmonMeter(hwmon_root, arg)
    if name == "csv":
        if not arg:
            raise EdgeError("--meter csv needs the log's path: csv:/path/to/power.csv (columns timestamp,watts)")
        return CsvLogMeter(arg)
    if name == "estimate":
        if arg:
            return EstimateMeter(BOARD_PROFILES[look_up_option(arg, BOARD_PROFILES, "board profile")])
        board = detect_board(device_tree)
        if board is None:
            raise EdgeError("--meter estimate needs a board profile, e.g. estimate:rk3399 (this machine's device "
                            f"tree names none of: {', '.join(BOARD_PROFILES)})")
        return EstimateMeter(board)
    # auto
    candidates: list[Meter] = ([NvmlMeter(0, nvml)] if device == "cuda" else
                               [RaplMeter(powercap_root), HwmonMeter(hwmon_root)])
    reasons = []
    for m in candidates:
        try:
            m.probe()
            return m
        except MeterUnavailable as exc:
            reasons.append(f"{m.name}: {exc}")
    if device != "cuda":
        board = detect_board(device_tree)
        if board is not None:
            return EstimateMeter(board)
        reasons.append(f"estimate: the device tree names no known board ({', '.join(BOARD_PROFILES)})")
    return UnavailableMeter("auto", "no meter can read here (" + "; ".join(reasons) + ")")


@dataclass
class IdlePower:
    power_w: float | None
    kind: str  # measured | estimated | unavailable
    source: str
    status: str  # "ok" or "unavailable: <reason>"
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_idle(meter: Meter, seconds: float, sleep: Callable[[float], None] = time.sleep) -> IdlePower:
    """Idle power over ``seconds`` of sleep; an estimate meter returns its profile's idle figure."""
    if isinstance(meter, EstimateMeter):
        return IdlePower(meter.profile.idle_w, "estimated", meter.source, "ok", 0.0)
    try:
        meter.start()
        sleep(seconds)
        r = meter.stop()
    except MeterUnavailable as exc:
        return IdlePower(None, "unavailable", meter.source, f"unavailable: {exc}", seconds)
    if r.duration_s <= 0:
        return IdlePower(None, "unavailable", meter.source, "unavailable: zero-length idle window", seconds)
    return IdlePower(r.energy_j / r.duration_s, meter.kind, meter.source, "ok", r.duration_s)


@dataclass
class EnergyRecord:
    """Energy of one case's sampling window. ``kind`` is measured, estimated or unavailable; unavailable
    records carry ``status = 'unavailable: <reason>'`` and no numbers."""

    meter: str
    kind: str
    status: str
    source: str | None = None
    images: int = 0
    duration_s: float | None = None
    energy_j: float | None = None
    mean_power_w: float | None = None
    energy_per_image_j: float | None = None
    idle_power_w: float | None = None
    idle_kind: str | None = None
    net_energy_j: float | None = None
    net_energy_per_image_j: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def unavailable(meter: str, reason: str, source: str | None = None) -> EnergyRecord:
    return EnergyRecord(meter=meter, kind="unavailable", status=f"unavailable: {reason}", source=source or None)


def energy_record(meter: Meter, reading: Reading, images: int, idle: IdlePower | None = None) -> EnergyRecord:
    """Per-image energy from a reading over ``images`` inferences; idle power subtracted when ``idle`` has it."""
    rec = EnergyRecord(meter=meter.name, kind=meter.kind, status="ok", source=meter.source, images=images,
                       duration_s=reading.duration_s, energy_j=reading.energy_j,
                       mean_power_w=reading.energy_j / reading.duration_s if reading.duration_s > 0 else None,
                       energy_per_image_j=reading.energy_j / images if images else None)
    if idle is not None and idle.power_w is not None:
        rec.idle_power_w, rec.idle_kind = idle.power_w, idle.kind
        rec.net_energy_j = reading.energy_j - idle.power_w * reading.duration_s
        rec.net_energy_per_image_j = rec.net_energy_j / images if images else None
    return rec
