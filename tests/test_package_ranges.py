"""The gpu extra allows only what the installed TRL supports: TRL states its bounds for DeepSpeed and vLLM in its
own extras (package metadata) and, for vLLM, refuses other versions at import (`trl.import_utils`). A wider range
in pyproject.toml would let pip install a vLLM that GRPO then refuses on the GPU machine."""
import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def gpu_extra() -> dict[str, SpecifierSet]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {Requirement(r).name: Requirement(r).specifier for r in extras["gpu"]}


def trl_bounds() -> dict[str, SpecifierSet]:
    """TRL's specifier per package over all its extras (the metadata's `Requires-Dist: ...; extra == "x"`)."""
    out: dict[str, SpecifierSet] = {}
    for line in importlib.metadata.requires("trl") or []:
        req = Requirement(line)
        if req.marker is not None and "extra" in str(req.marker) and req.specifier:
            out[req.name] = out.get(req.name, SpecifierSet()) & req.specifier
    return out


def candidates(*specs: SpecifierSet) -> list[Version]:
    """Every version a bound names, and its neighbours: where two ranges can differ."""
    out = set()
    for spec in specs:
        for s in spec:
            v = Version(s.version.replace(".*", ""))
            major, minor, micro = (list(v.release) + [0, 0])[:3]
            for m in (minor - 1, minor, minor + 1):
                for p in (0, micro - 1, micro, micro + 1, 99):
                    if m >= 0 and p >= 0:
                        out.add(Version(f"{major}.{m}.{p}"))
            out.add(Version(f"{major + 1}.0.0"))
    return sorted(out)


def wider(ours: SpecifierSet, theirs: SpecifierSet) -> list[str]:
    return [str(v) for v in candidates(ours, theirs) if ours.contains(v, prereleases=True)
            and not theirs.contains(v, prereleases=True)]


def test_the_gpu_extra_is_within_what_trl_supports():
    ours, theirs = gpu_extra(), trl_bounds()
    assert {"vllm", "deepspeed"} <= set(ours) and {"vllm", "deepspeed"} <= set(theirs), (ours, theirs)
    for name in ("vllm", "deepspeed"):
        outside = wider(ours[name], theirs[name])
        trl = importlib.metadata.version("trl")
        assert not outside, (f"pyproject's gpu extra allows {name}{ours[name]}, TRL {trl} supports "
                             f"{name}{theirs[name]}: {outside} pass ours only")


def test_the_vllm_range_matches_the_one_trl_checks_at_import():
    source = Path(importlib.util.find_spec("trl.import_utils").origin).read_text()
    found = re.search(r'Version\("([\d.]+)"\)\s*<=\s*_vllm_base_version\s*<=\s*Version\("([\d.]+)"\)', source)
    if found is None:
        pytest.skip("this TRL states no vLLM range in trl/import_utils.py")
    low, high = found.groups()
    assert not wider(gpu_extra()["vllm"], SpecifierSet(f">={low},<={high}"))


def test_the_check_catches_a_wider_range():
    """The comparison itself: the old extra (vLLM up to 0.33, DeepSpeed from 0.17) is refused."""
    theirs = trl_bounds()
    assert wider(SpecifierSet(">=0.10.2,<0.34"), theirs["vllm"])
    assert wider(SpecifierSet(">=0.17"), theirs["deepspeed"])
    assert not wider(SpecifierSet(">=0.23,<0.30"), SpecifierSet(">=0.22.0,<=0.31.0"))
