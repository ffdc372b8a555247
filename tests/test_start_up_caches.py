"""The caches that keep a large catalogue's start-up cheap: parsed manifests, and handler interfaces
written once per batch. Both give what reading the files gives, and notice any change."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import betty_mcp.core.catalog as catalog_module
import betty_mcp.run.interface as interface_module
from betty_mcp.core.catalog import load_catalog
from betty_mcp.core.config import load_settings
from betty_mcp.core.manifest_cache import ManifestCache
from betty_mcp.core.manifests import read_yaml
from betty_mcp.run.interface import InterfaceCache, interface_for
from tests.conftest import FIXTURE_SKILLS

MANIFEST = """\
name: cache.s{i}
version: 1.0.0
description: skill {i}
status: active
inputs:
  - name: path
    type: string
    required: true
entrypoints:
  - command: /cache/s{i}
    handler: h.py
    runtime: python
"""
A_MINUTE_AGO = time.time() - 60


def skills_folder(root: Path, count: int) -> Path:
    for i in range(count):
        folder = root / f"cache.s{i}"
        folder.mkdir(parents=True)
        (folder / "skill.yaml").write_text(MANIFEST.format(i=i))
        (folder / "h.py").write_text("print('{}')\n")
        os.utime(folder / "skill.yaml", (A_MINUTE_AGO, A_MINUTE_AGO))
    return root


@pytest.fixture
def settings(tmp_path: Path):
    skills = skills_folder(tmp_path / "skills", 5)
    shutil.copytree(FIXTURE_SKILLS / "test.echo", skills / "test.echo")
    (tmp_path / "ws").mkdir()
    return load_settings(workspace=tmp_path / "ws", skills_dirs=[skills], bundled=False)


def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Count the manifests parsed from YAML."""
    parsed: list[Path] = []

    def counting(path: Path):
        parsed.append(path)
        return read_yaml(path)

    monkeypatch.setattr(catalog_module, "read_yaml", counting)
    return parsed


def manifests(catalog) -> dict:
    return {name: skill.manifest for name, skill in catalog.skills.items()}


def test_a_second_load_parses_nothing_and_gives_the_same_catalogue(settings, monkeypatch) -> None:
    parsed = reads(monkeypatch)
    first = load_catalog(settings)
    assert len(parsed) == 6 and len(first.skills) == 6
    second = load_catalog(settings)
    assert len(parsed) == 6, "every manifest came from the cache"
    assert manifests(second) == manifests(first)
    assert {s.input_schema == first.skills[n].input_schema for n, s in second.skills.items()} == {True}


def test_an_edited_manifest_is_read_again(settings, monkeypatch) -> None:
    load_catalog(settings)
    parsed = reads(monkeypatch)
    path = settings.skills_dirs[0] / "cache.s1" / "skill.yaml"
    path.write_text(path.read_text().replace("skill 1", "skill 9"))  # same size, new time
    os.utime(path, (A_MINUTE_AGO + 5, A_MINUTE_AGO + 5))
    catalog = load_catalog(settings)
    assert parsed == [path] and catalog.skills["cache.s1"].manifest.description == "skill 9"


def test_a_file_just_written_is_not_cached(settings, monkeypatch) -> None:
    path = settings.skills_dirs[0] / "cache.s2" / "skill.yaml"
    path.touch()  # modified now: a coarse clock could give its next edit the same time
    load_catalog(settings)
    parsed = reads(monkeypatch)
    load_catalog(settings)
    assert parsed == [path]


def test_data_json_cannot_hold_is_read_each_time(tmp_path: Path) -> None:
    path = tmp_path / "skill.yaml"
    path.write_text("name: a.b\ncreated: 2024-05-01\n")
    os.utime(path, (A_MINUTE_AGO, A_MINUTE_AGO))
    cache = ManifestCache(tmp_path / "cache.json")
    first = cache.data(path, read_yaml)
    cache.save()
    again = ManifestCache(tmp_path / "cache.json").data(path, lambda p: "read again")
    assert str(first["created"]) == "2024-05-01" and again == "read again"


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"format": 1, "entries": []}', '{"format": 99}'])
def test_a_corrupt_cache_counts_as_empty(settings, garbage: str) -> None:
    expected = manifests(load_catalog(settings))
    (settings.cache_dir / "manifests.json").write_text(garbage)
    assert manifests(load_catalog(settings)) == expected


def test_removed_skills_leave_the_cache(settings) -> None:
    load_catalog(settings)
    shutil.rmtree(settings.skills_dirs[0] / "cache.s3")
    catalog = load_catalog(settings)
    entries = json.loads((settings.cache_dir / "manifests.json").read_text())["entries"]
    assert "cache.s3" not in catalog.skills and not any("cache.s3" in key for key in entries)


def test_an_unwritable_cache_only_costs_time(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cache = ManifestCache(tmp_path / "file" / "manifests.json")
    path = tmp_path / "skill.yaml"
    path.write_text("name: a.b\n")
    os.utime(path, (A_MINUTE_AGO, A_MINUTE_AGO))
    assert cache.data(path, read_yaml) == {"name": "a.b"}
    cache.save()  # no error


def test_interfaces_read_in_a_batch_are_written_once(tmp_path: Path, monkeypatch) -> None:
    writes: list[Path] = []
    real = interface_module.write_atomically

    def counting(path: Path, text: str) -> bool:
        writes.append(path)
        return real(path, text)

    monkeypatch.setattr(interface_module, "write_atomically", counting)
    monkeypatch.setattr(interface_module, "SAVE_EVERY_SECONDS", 3600.0)
    handlers = []
    for i in range(20):
        handler = tmp_path / f"h{i}.py"
        handler.write_text(f"import argparse\np = argparse.ArgumentParser()\np.add_argument('--a{i}')\n")
        handlers.append(handler)
    cache = InterfaceCache(tmp_path / "interfaces.json")
    python = str(Path(os.sys.executable))
    with cache.batch():
        found = [
            interface_for(h, python=python, env=dict(os.environ), cwd=tmp_path, cache=cache) for h in handlers
        ]
        assert cache.get(handlers[0], python) == found[0]  # stored, though not written yet
    assert len(writes) == 1  # at the end, not once per handler
    fresh = InterfaceCache(cache.path)
    assert [fresh.get(h, python) for h in handlers] == found


@pytest.mark.anyio
@pytest.mark.parametrize("fails", [False, True])
async def test_garbage_collection_resumes_after_the_warm_up_with_start_up_frozen(fails: bool) -> None:
    """``serve`` turns automatic collection off for start-up; once the warm-up is over (done or failed)
    it is on again, with what start-up made frozen."""
    import gc

    import anyio

    from betty_mcp.mcp import transports

    class Services:
        async def warm_up(self) -> None:
            assert not gc.isenabled(), "still starting up"
            if fails:
                raise RuntimeError("the warm-up failed")

    served = anyio.Event()
    served.set()
    gc.disable()
    try:
        await transports._warm_up_when_served(Services(), served)  # type: ignore[arg-type]
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()
