"""Energy meters against fake sysfs trees, CSV logs and a fake NVML: wrap-around, permissions, missing files, and
never a silent 0."""
from __future__ import annotations

import datetime as dt
import pathlib
from pathlib import Path

import pytest

from benchmarks import power
from benchmarks.power import (CsvLogMeter, EstimateMeter, HwmonMeter, MeterUnavailable, NvmlMeter, RaplMeter,
                              UnavailableMeter, create_meter, energy_record, integrate, measure_idle)
from edge.errors import EdgeError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rapl_tree(root: Path, packages: dict[int, tuple[int, int]], sub: bool = True) -> Path:
    """``packages``: index -> (energy_uj, max_energy_range_uj), laid out like /sys/class/powercap."""
    for i, (e, rng) in packages.items():
        d = root / f"intel-rapl:{i}"
        write(d / "name", f"package-{i}\n")
        write(d / "energy_uj", f"{e}\n")
        write(d / "max_energy_range_uj", f"{rng}\n")
        if sub:  # a core sub-domain: inside the package figure, must not be added again
            write(root / f"intel-rapl:{i}:0" / "name", "core\n")
            write(root / f"intel-rapl:{i}:0" / "energy_uj", "999999999\n")
    return root


def test_rapl_sums_packages_not_subdomains(tmp_path):
    root = rapl_tree(tmp_path / "powercap", {0: (1_000_000, 262_143_328_850), 1: (5_000_000, 262_143_328_850)})
    m = RaplMeter(root)
    m.start()
    write(root / "intel-rapl:0" / "energy_uj", "3500000\n")   # +2.5 J
    write(root / "intel-rapl:1" / "energy_uj", "6000000\n")   # +1.0 J
    write(root / "intel-rapl:0:0" / "energy_uj", "1\n")       # sub-domain change is ignored
    r = m.stop()
    assert r.energy_j == pytest.approx(3.5)
    assert "package-0 + package-1" in m.source


def test_rapl_corrects_one_wrap_around(tmp_path):
    root = rapl_tree(tmp_path / "powercap", {0: (999_000_000, 1_000_000_000)}, sub=False)
    m = RaplMeter(root)
    m.start()
    write(root / "intel-rapl:0" / "energy_uj", "2000000\n")  # wrapped: 1.0 J to the top, then 2.0 J
    assert m.stop().energy_j == pytest.approx(3.0)


def test_rapl_wrap_without_max_range_is_unavailable(tmp_path):
    root = rapl_tree(tmp_path / "powercap", {0: (999_000_000, 1_000_000_000)}, sub=False)
    (root / "intel-rapl:0" / "max_energy_range_uj").unlink()
    m = RaplMeter(root)
    m.start()
    write(root / "intel-rapl:0" / "energy_uj", "2000000\n")
    with pytest.raises(MeterUnavailable, match="max_energy_range_uj is missing"):
        m.stop()


def test_rapl_permission_denied_says_root_since_linux_5_10(tmp_path, monkeypatch):
    root = rapl_tree(tmp_path / "powercap", {0: (1, 10)})
    real = pathlib.Path.read_text

    def deny(self, *a, **kw):  # the tests may run as root, which bypasses file modes
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "read_text", deny)
    with pytest.raises(MeterUnavailable, match=r"readable only by root since Linux 5\.10"):
        RaplMeter(root).start()


def test_rapl_missing_tree_or_counter_is_unavailable(tmp_path):
    with pytest.raises(MeterUnavailable, match="no powercap driver"):
        RaplMeter(tmp_path / "absent").probe()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MeterUnavailable, match="no RAPL package domains"):
        RaplMeter(tmp_path / "empty").probe()
    root = rapl_tree(tmp_path / "pc", {0: (1, 10)})
    (root / "intel-rapl:0" / "energy_uj").unlink()
    with pytest.raises(MeterUnavailable, match="energy_uj is missing"):
        RaplMeter(root).probe()


def hwmon_tree(root: Path) -> Path:
    write(root / "hwmon0" / "name", "coretemp\n")
    write(root / "hwmon0" / "temp1_input", "45000\n")
    write(root / "hwmon1" / "name", "ina226\n")
    write(root / "hwmon1" / "power1_input", "2500000\n")  # 2.5 W in microwatts
    (root / "hwmon2").mkdir()  # a device without a name file is skipped
    return root


def test_hwmon_samples_and_integrates_an_ina226(tmp_path):
    m = HwmonMeter(hwmon_tree(tmp_path / "hwmon"), interval_s=0.005)
    m.start()
    import time

    time.sleep(0.05)
    r = m.stop()
    assert r.samples >= 3
    assert r.energy_j / r.duration_s == pytest.approx(2.5)  # constant power: exact under the trapezoid rule
    assert "ina226" in m.source and "power1_input" in m.source


def test_hwmon_picks_a_device_by_name_and_lists_what_exists(tmp_path):
    root = hwmon_tree(tmp_path / "hwmon")
    with pytest.raises(MeterUnavailable, match=r"named 'ina219'.*devices: coretemp, ina226"):
        HwmonMeter(root, "ina219").probe()
    with pytest.raises(MeterUnavailable, match="no hwmon drivers"):
        HwmonMeter(tmp_path / "nothing").probe()


def test_hwmon_sensor_vanishing_mid_run_is_unavailable(tmp_path):
    root = hwmon_tree(tmp_path / "hwmon")
    m = HwmonMeter(root, interval_s=0.005)
    m.start()
    (root / "hwmon1" / "power1_input").unlink()
    with pytest.raises(MeterUnavailable, match="power1_input is missing"):
        m.stop()


def test_integrate_interpolates_at_the_window_edges():
    ts, ws = [0.0, 10.0], [0.0, 10.0]  # w(t) = t
    assert integrate(ts, ws, 2.0, 4.0) == pytest.approx((4 ** 2 - 2 ** 2) / 2)


def csv_log(path: Path, start: float, n: int, watts, iso: bool = False) -> Path:
    lines = ["timestamp,watts,volts"]
    for i in range(n):
        t = start + i
        stamp = dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat() if iso else f"{t:.3f}"
        lines.append(f"{stamp},{watts(i)},5.0")
    return write(path, "\n".join(lines) + "\n")


class Clock:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


@pytest.mark.parametrize("iso", [False, True])
def test_csv_log_is_aligned_to_the_run_and_integrated(tmp_path, iso):
    t0 = 1_700_000_000.0
    log = csv_log(tmp_path / "meter.csv", t0, 11, lambda i: 5 + i, iso)  # w = 5 + (t - t0)
    m = CsvLogMeter(log, clock=Clock(t0 + 2.5, t0 + 7.5))
    m.start()
    r = m.stop()
    # integral of 5 + s over s in [2.5, 7.5] = 5 * 5 + (7.5^2 - 2.5^2) / 2 = 50
    assert r.energy_j == pytest.approx(50.0)
    assert r.duration_s == pytest.approx(5.0) and r.samples == 5


def test_csv_log_that_does_not_cover_the_run_is_unavailable(tmp_path):
    t0 = 1_700_000_000.0
    log = csv_log(tmp_path / "meter.csv", t0, 5, lambda i: 3.0)
    m = CsvLogMeter(log, clock=Clock(t0 + 1, t0 + 9))
    m.start()
    with pytest.raises(MeterUnavailable, match="not the run"):
        m.stop()


def test_csv_log_format_errors_are_unavailable(tmp_path):
    with pytest.raises(MeterUnavailable, match="does not exist"):
        power.read_power_log(tmp_path / "none.csv")
    with pytest.raises(MeterUnavailable, match="timestamp and a watts column"):
        power.read_power_log(write(tmp_path / "a.csv", "time_ms,amps\n1,2\n"))
    with pytest.raises(MeterUnavailable, match="line 3"):
        power.read_power_log(write(tmp_path / "b.csv", "timestamp,watts\n1,2\nx,y\n"))


class FakeNvml:
    def __init__(self, energies: list[int], fail: Exception | None = None) -> None:
        self.energies, self.fail = energies, fail

    def nvmlInit(self):
        if self.fail:
            raise self.fail

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self.energies.pop(0)

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100"


def test_nvml_reads_millijoules_before_and_after():
    m = NvmlMeter(0, FakeNvml([10_000, 13_250]))
    m.start()
    assert m.stop().energy_j == pytest.approx(3.25)
    assert "NVIDIA H100" in m.source


def test_nvml_without_driver_or_library_is_unavailable(monkeypatch):
    with pytest.raises(MeterUnavailable, match="Driver Not Loaded"):
        NvmlMeter(0, FakeNvml([], RuntimeError("Driver Not Loaded"))).probe()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(MeterUnavailable, match="pip install nvidia-ml-py"):
        NvmlMeter(0).probe()


def test_board_profile_estimate_is_labelled_and_subtracts_published_idle():
    m = create_meter("estimate:rk3399")
    assert isinstance(m, EstimateMeter) and m.kind == "estimated"
    assert "9.6 W" in m.source and "seeds/002" in m.source
    m.start()
    r = m.stop()
    idle = measure_idle(m, 10.0)
    assert idle.power_w == 3.6 and idle.kind == "estimated"
    rec = energy_record(m, r, images=4, idle=idle)
    assert rec.kind == "estimated" and rec.energy_j == pytest.approx(9.6 * r.duration_s)
    assert rec.net_energy_j == pytest.approx(6.0 * r.duration_s)
    assert rec.net_energy_per_image_j == pytest.approx(rec.net_energy_j / 4)


def test_measured_idle_is_subtracted(tmp_path):
    root = hwmon_tree(tmp_path / "hwmon")
    m = HwmonMeter(root, interval_s=0.005)
    idle = measure_idle(m, 0.02)
    assert idle.kind == "measured" and idle.power_w == pytest.approx(2.5)
    write(root / "hwmon1" / "power1_input", "4000000\n")  # 4 W under load
    m.start()
    import time

    time.sleep(0.03)
    rec = energy_record(m, m.stop(), images=3, idle=idle)
    assert rec.mean_power_w == pytest.approx(4.0)
    assert rec.net_energy_j == pytest.approx(1.5 * rec.duration_s)


def test_unavailable_meter_never_reports_zero():
    m = create_meter("none")
    assert isinstance(m, UnavailableMeter)
    with pytest.raises(MeterUnavailable, match="no meter selected"):
        m.start()
    rec = power.unavailable("none", "no meter selected")
    assert rec.status.startswith("unavailable: ") and rec.energy_j is None and rec.energy_per_image_j is None
    assert measure_idle(m, 0.0).power_w is None


def test_meter_names_and_arguments_are_checked():
    with pytest.raises(EdgeError, match=r"unknown meter 'rappl'; did you mean 'rapl'\? choices: auto, none"):
        create_meter("rappl")
    with pytest.raises(EdgeError, match="csv:/path/to/power.csv"):
        create_meter("csv")
    with pytest.raises(EdgeError, match="unknown board profile 'rk3339'; did you mean 'rk3399'"):
        create_meter("estimate:rk3339")
    assert isinstance(create_meter("csv:/tmp/log.csv"), CsvLogMeter)
    assert create_meter("hwmon:ina226").device == "ina226"


def test_auto_falls_back_to_the_board_profile_on_an_rk3399(tmp_path):
    dtree = tmp_path / "dt"
    write(dtree / "compatible", "radxa,rockpi4b\0rockchip,rk3399\0")
    m = create_meter("auto", powercap_root=tmp_path / "no-pc", hwmon_root=tmp_path / "no-hw", device_tree=dtree)
    assert isinstance(m, EstimateMeter) and m.profile.name == "rk3399"
    assert create_meter("estimate", device_tree=dtree).kind == "estimated"


def test_auto_prefers_a_real_meter_and_explains_when_there_is_none(tmp_path):
    hw = hwmon_tree(tmp_path / "hwmon")
    assert isinstance(create_meter("auto", powercap_root=tmp_path / "x", hwmon_root=hw, device_tree=tmp_path),
                      HwmonMeter)
    m = create_meter("auto", powercap_root=tmp_path / "x", hwmon_root=tmp_path / "y", device_tree=tmp_path)
    assert isinstance(m, UnavailableMeter)
    assert "rapl:" in m.reason and "hwmon:" in m.reason and "estimate:" in m.reason
    with pytest.raises(EdgeError, match="estimate:rk3399"):
        create_meter("estimate", device_tree=tmp_path)
