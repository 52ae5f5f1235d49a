"""The shared toolkit in cnnlab.utils: registry, index lists, tagged files, devices, config diffs, memory."""

import sys

import pytest
import torch

from cnnlab.utils.configdiff import config_diff, mismatch_message
from cnnlab.utils.devices import check_device_name, resolve_device
from cnnlab.utils.indices import parse_index_list
from cnnlab.utils.memory import peak_rss_bytes
from cnnlab.utils.registry import Registry
from cnnlab.utils.tagged import TaggedFileError, load_tagged


def test_registry_registers_looks_up_and_suggests():
    reg: Registry[type] = Registry("widget", error=LookupError, hint="Run `widgets list`.")

    @reg.register("alpha")
    class Alpha:
        pass

    reg.register("beta", int)
    assert reg.get("alpha") is Alpha and reg["beta"] is int
    assert reg.names() == ["alpha", "beta"] and "alpha" in reg and len(reg) == 2
    with pytest.raises(LookupError, match=r"unknown widget 'alpah'. Did you mean 'alpha'\?.*widgets list"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="widget 'beta' is registered twice"):
        reg.register("beta", float)
    with pytest.raises(ValueError, match="registered twice"):  # the same object again is a second registration too
        reg.register("beta", int)
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("", int)
    reg.register("beta", float, replace=True)
    assert reg.get("beta") is float


@pytest.mark.parametrize("spec,size,want", [
    ("0-3", 10, [0, 1, 2, 3]), ("3,1,1,5-6", None, [1, 3, 5, 6]), (" 2 , 4 ", 5, [2, 4]),
    (7, 8, [7]), ([4, 2], 5, [2, 4]),
])
def test_index_list_parses(spec, size, want):
    assert parse_index_list(spec, size) == want


@pytest.mark.parametrize("spec,size,msg", [
    ("5-2", None, "not an index or a range"), ("a", None, "not an index"), ("0-2000000000", 10, r"outside \[0, 10\)"),
    ("10", 10, "outside"), ("-1", None, "negative"), ("", None, "no index"), (True, None, "expected"),
    ([1, "2"], None, "list of integers"),
])
def test_index_list_refuses_with_the_option_named(spec, size, msg):
    with pytest.raises(ValueError, match=msg) as e:
        parse_index_list(spec, size, what="--targets")
    assert "--targets" in str(e.value)


def test_tagged_file_round_trip_and_refusals(tmp_path):
    good, other, junk = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    torch.save({"format": "cnnlab-x-v1", "w": torch.ones(2)}, good)
    torch.save({"format": "cnnlab-y-v1"}, other)
    junk.write_bytes(b"not a torch file")
    assert torch.equal(load_tagged(good, "cnnlab-x-v1")["w"], torch.ones(2))
    assert load_tagged(good, ("cnnlab-y-v1", "cnnlab-x-v1"))["format"] == "cnnlab-x-v1"
    with pytest.raises(TaggedFileError, match="not a cnnlab-x-v1 checkpoint: its format tag is 'cnnlab-y-v1'"):
        load_tagged(other, "cnnlab-x-v1", what="checkpoint")
    with pytest.raises(TaggedFileError, match="cannot read"):
        load_tagged(junk, "cnnlab-x-v1")
    with pytest.raises(TaggedFileError, match="does not exist"):
        load_tagged(tmp_path / "missing.pt", "cnnlab-x-v1")


def test_devices():
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert check_device_name(ok) == ok
    for bad in ("gpu", "cuda:x", "", "CPU"):
        with pytest.raises(ValueError, match="device must be"):
            check_device_name(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(KeyError, match="train.device: 'cuda' asked for"):
            resolve_device("cuda", key="train.device", error=KeyError)


def test_config_diff_and_message():
    old = {"train": {"lr": 0.1, "epochs": 2}, "model": {"name": "a"}, "x": 1}
    new = {"train": {"lr": 0.2, "epochs": 3}, "model": {"name": "a"}}
    assert config_diff(old, new) == [("train.epochs", 2, 3), ("train.lr", 0.1, 0.2), ("x", 1, None)]
    assert config_diff(old, new, ignore=("train.epochs", "x")) == [("train.lr", 0.1, 0.2)]
    msg = mismatch_message("resume", "runs/a", config_diff(old, new), limit=2, hint="Use another --out.")
    assert msg == ("cannot resume runs/a: its config differs from this one at train.epochs (2 -> 3), "
                   "train.lr (0.1 -> 0.2) and 1 more. Use another --out.")


def _current_rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc to compare against")
def test_peak_rss_counts_a_new_allocation_in_bytes():
    block = torch.ones(256 * 1024 * 1024 // 4)  # 256 MiB, touched: resident now, so the peak is at least this
    rss_now, peak = _current_rss_bytes(), peak_rss_bytes()
    assert rss_now >= 256 * 1024 * 1024
    assert peak >= rss_now, (peak, rss_now)  # KiB or MiB units would fail this
    assert peak < 64 * 1024**3  # and bytes, not a larger unit
    del block
