"""Fuzz of manifest loading: random YAML (wrong types, unknown keys, anchors, aliases, alias bombs,
YAML tags, mangled text) through ``load_skill_manifest``, ``load_agent_manifest`` and ``load_catalog``.

Invariants: the only exception that escapes is ``ManifestError``/``DocumentError``, naming the file;
each load is bounded in time (< 1 s of CPU) and memory (< 100 MB); a catalog load never raises, and
every skill folder either becomes a skill or is reported as a problem.

What this fuzz found is pinned at the bottom, each test named after the finding and its reproduction.
"""

from __future__ import annotations

import contextlib
import json
import string
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from betty_mcp.core.catalog import input_schema, load_catalog, output_schema
from betty_mcp.core.config import Settings
from betty_mcp.core.documents import MAX_MANIFEST_BYTES
from betty_mcp.core.errors import DocumentError, ManifestError
from betty_mcp.core.manifests import AgentManifest, SkillManifest, load_agent_manifest, load_skill_manifest

# Hypothesis's caches (unicode tables, constants) go to the temp folder, not the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "betty-mcp-hypothesis")

FUZZ = settings(
    database=None,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_SECONDS = 1.0  # CPU time of one load (the thread's, so other work on the machine does not count)
MAX_BYTES = 100 * 1024 * 1024

# -- strategies --------------------------------------------------------------------------------

text_bits = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["", " ", "~", "null", "yes", "no", "0x1F", ".nan", "1e400", "-", "é", "日本", "a: b", "- x"]
    ),
)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    text_bits,
)
anything = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(text_bits, st.integers()), inner, max_size=4)
    ),
    max_leaves=10,
)
names = st.one_of(
    st.sampled_from(
        ["api.validate", "fuzz.one", "fuzz.two", "x", "a.b", "a_b", "UPPER.case", "-bad", "a" * 130]
    ),
    st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True),
    scalar,
)
types_ = st.one_of(
    st.sampled_from(
        ["string", "str", "integer", "int", "number", "boolean", "array", "object", "path", "file"]
    ),
    st.sampled_from(["enum", "json", "dir", "blob", "STRING", "", "list[str]"]),
    scalar,
)
param = st.one_of(
    st.fixed_dictionaries(
        {"name": names},
        optional={
            "type": types_,
            "required": st.one_of(st.booleans(), scalar),
            "optional": scalar,
            "description": st.one_of(text_bits, scalar),
            "default": anything,
            "enum": st.one_of(st.lists(scalar, max_size=4), scalar),
            "options": st.one_of(st.lists(scalar, max_size=4), scalar),
            "values": anything,
            "items": st.one_of(types_, anything),
            "is_path": scalar,
        },
    ),
    st.sampled_from(
        [
            "spec_path (string, required): The spec",
            "rule_set (str, optional, default=all): rules",
            "x",
            "(broken",
            "1abc: nope",
            "name (blob): x",
        ]
    ),
    st.dictionaries(text_bits, scalar, min_size=1, max_size=1),  # "- epic_file (string): Path" unquoted
    scalar,
)
# Handler names, some of them hostile (a NUL has its own test below).
handler_names = st.one_of(
    st.sampled_from(
        ["h.py", "handler.py", "../escape.py", "/etc/passwd", "sub/h.py", "", ".", "h.sh", "~/h.py"]
    ),
    st.text(alphabet=string.ascii_letters + "./_-~ é", max_size=40),
    st.integers(1, 300).map(lambda n: "h" * n + ".py"),
    scalar,
)
entrypoint = st.fixed_dictionaries(
    {},
    optional={
        "handler": handler_names,
        "runtime": st.one_of(st.sampled_from(["python", "python3", "bash", "node", "cobol"]), scalar),
        "command": scalar,
        "description": scalar,
        "parameters": st.one_of(st.lists(param, max_size=3), scalar),
        "permissions": anything,
    },
)
mcp_block = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "arguments": st.one_of(st.sampled_from(["betty", "json-argv", "json-stdin", "xml"]), scalar),
            "flag_style": st.one_of(st.sampled_from(["snake", "kebab"]), scalar),
            "positional": st.one_of(st.lists(names, max_size=3), scalar),
            "timeout_seconds": st.one_of(st.floats(allow_nan=True), st.integers(), scalar),
            "env": st.one_of(st.lists(text_bits, max_size=3), scalar),
            "path_inputs": st.one_of(st.lists(names, max_size=3), scalar),
            "llm_keys": scalar,
            "unknown": anything,
        },
    ),
    anything,
)
skill_fields = {
    "version": st.one_of(st.sampled_from(["1.0.0", "0.1"]), scalar),
    "description": st.one_of(text_bits, anything),
    "status": st.one_of(st.sampled_from(["active", "draft", "deprecated", "archived", "gone"]), scalar),
    "inputs": st.one_of(st.lists(param, max_size=4), anything),
    "outputs": st.one_of(
        st.lists(st.one_of(text_bits, st.dictionaries(text_bits, scalar)), max_size=3), anything
    ),
    "parameters": st.one_of(st.lists(param, max_size=3), anything),
    "returns": st.one_of(st.dictionaries(text_bits, types_, max_size=3), anything),
    "entrypoints": st.one_of(st.lists(entrypoint, max_size=2), anything),
    "execution": st.one_of(
        st.fixed_dictionaries({"entry_point": handler_names}, optional={"runtime": scalar, "type": scalar}),
        anything,
    ),
    "tags": anything,
    "dependencies": anything,
    "permissions": anything,
    "mcp": mcp_block,
}
agent_fields = {
    "version": scalar,
    "description": anything,
    "status": scalar,
    "capabilities": anything,
    "skills_available": st.one_of(st.lists(names, max_size=4), anything),
    "reasoning_mode": st.one_of(st.sampled_from(["iterative", "oneshot", "chaotic"]), scalar),
    "system_prompt": anything,
    "context_requirements": anything,
    "error_handling": st.one_of(
        st.fixed_dictionaries({}, optional={"max_retries": scalar, "timeout_seconds": scalar}), anything
    ),
    "llm_config": st.one_of(
        st.fixed_dictionaries({}, optional={"primary_model": scalar, "reasoning_budget": scalar}), anything
    ),
    "llm_preference": scalar,
    "output": anything,
}
manifest_data = st.fixed_dictionaries(
    {"name": names},
    optional={**skill_fields, **agent_fields, "unknown_field": anything, "x-extra": anything},
)


@st.composite
def alias_bomb(draw: Any) -> str:
    """``b0: &b0 [x, x, x]``, ``b1: &b1 [*b0, *b0, *b0]``, ...: 9 to 11 levels, in unknown fields,
    the top one referenced from a known or an unknown field."""
    levels = draw(st.integers(9, 11))
    width = draw(st.integers(2, 3))
    mapping = draw(st.booleans())
    lines = []
    for level in range(levels + 1):
        items = ["x"] * width if level == 0 else [f"*b{level - 1}"] * width
        body = (
            "{" + ", ".join(f"k{i}: {v}" for i, v in enumerate(items)) + "}"
            if mapping
            else f"[{', '.join(items)}]"
        )
        lines.append(f"bomb_{level}: &b{level} {body}")
    where = draw(
        st.sampled_from(["bomb_top", "extra", "tags", "inputs", "dependencies", "description", "mcp"])
    )
    return "\n".join(lines) + f"\n{where}: *b{levels}\n"


YAML_TRICKS = [
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!timestamp 2001-12-14",
    "!!float .nan",
    "!!int 0x1F",
    "!!omap [a: 1]",
    "!!python/object:os.system [echo]",
    "!!str",
    "? [a, b]",
    "<<: *undefined",
    "&anchor",
    "*alias",
    "|",
    ">-",
    "---",
    "...",
    "%YAML 1.1",
    "\t",
    "'",
    '"',
    "{",
    "]",
    "#",
    ": ",
    "- ",
    "\ufeff",
    "\x00",
    "\x85",
]


@st.composite
def manifest_texts(draw: Any) -> str:
    data = draw(manifest_data)
    style = draw(st.sampled_from(["block", "mixed", "json"]))
    if style == "json":
        text = json.dumps(data, default=str)
    else:
        text = yaml.safe_dump(
            data, default_flow_style=None if style == "mixed" else False, allow_unicode=True
        )
    if style != "json" and draw(st.booleans()):
        # Anchors and aliases between fields: one value reused by another (a known field, or many).
        key = draw(st.sampled_from(["inputs", "parameters", "tags", "entrypoints", "mcp", "outputs"]))
        text += f"shared_anchor: &shared {json.dumps(draw(anything), default=str)}\n{key}: *shared\n"
    if style != "json" and draw(st.integers(0, 3)) == 0:
        text += draw(alias_bomb())
    for _ in range(draw(st.integers(0, 3))):  # mangle: YAML syntax dropped in anywhere
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(YAML_TRICKS)) + text[at:]
    return text


any_text = st.one_of(
    manifest_texts(),
    manifest_texts(),
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)

# -- helpers -----------------------------------------------------------------------------------


def timed_load(loader: Callable[[Path], Any], path: Path) -> tuple[Any, BaseException | None, float]:
    started = time.thread_time()
    try:
        return loader(path), None, time.thread_time() - started
    except (ManifestError, DocumentError) as exc:
        return None, exc, time.thread_time() - started


def peak_bytes(load: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        load()
    except (ManifestError, DocumentError):
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


@contextlib.contextmanager
def rss_bounded() -> Iterator[None]:
    """The process's RSS may not grow by MAX_BYTES inside the block. Its peak is reset on entry
    (``clear_refs``), so neither earlier tests nor threads they left running count, only the block."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    yield
    grown = (_status_kb("VmHWM") - before) * 1024
    assert grown < MAX_BYTES, f"the process's peak RSS grew by {grown / 2**20:.0f} MB while loading manifests"


def use(manifest: Any) -> None:
    """What the catalog computes from a loaded manifest: none of it may raise."""
    if isinstance(manifest, SkillManifest):
        json.dumps(input_schema(manifest.params), default=str)
        output_schema(manifest)
        _ = manifest.handler, manifest.runtime, manifest.load_warnings, manifest.typed_outputs
    else:
        assert isinstance(manifest, AgentManifest)
        _ = manifest.skills_available, manifest.error_handling.max_retries


# -- single manifests --------------------------------------------------------------------------


@FUZZ
@given(text=any_text, kind=st.sampled_from(["skill", "agent"]))
def test_any_manifest_text_loads_or_is_refused_with_a_manifest_error(text: str, kind: str) -> None:
    loader = load_skill_manifest if kind == "skill" else load_agent_manifest
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.yaml"
        path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        with rss_bounded():
            manifest, error, seconds = timed_load(loader, path)
    assert seconds < MAX_SECONDS, f"loading took {seconds:.2f}s of CPU"
    if error is not None:
        assert str(path) in str(error), f"the error must name the file: {error}"
        assert len(str(error)) < 100_000
    else:
        use(manifest)


BOMBS = {
    # name: (levels, width, mapping?, where)
    "9x3_list_unknown_field": (9, 3, False, "extra"),
    "9x3_list_in_tags": (9, 3, False, "tags"),
    "9x3_map_in_mcp": (9, 3, True, "mcp"),
    "13x3_list_unknown_field": (13, 3, False, "extra"),
    "9x9_list_in_dependencies": (9, 9, False, "dependencies"),
    "12x4_map_in_inputs": (12, 4, True, "inputs"),
    "30x2_list_in_description": (30, 2, False, "description"),
}


def bomb_text(levels: int, width: int, mapping: bool, where: str) -> str:
    lines = ["name: fuzz.bomb"]
    for level in range(levels + 1):
        items = ["lol"] * width if level == 0 else [f"*a{level - 1}"] * width
        body = (
            "{" + ", ".join(f"k{i}: {v}" for i, v in enumerate(items)) + "}"
            if mapping
            else f"[{', '.join(items)}]"
        )
        lines.append(f"unknown_{level}: &a{level} {body}")
    return "\n".join(lines) + f"\n{where}: *a{levels}\n"


@pytest.mark.parametrize("shape", list(BOMBS))
@pytest.mark.parametrize("loader", [load_skill_manifest, load_agent_manifest], ids=["skill", "agent"])
def test_alias_bombs_are_bounded(tmp_path: Path, shape: str, loader: Callable[[Path], Any]) -> None:
    path = tmp_path / "skill.yaml"
    path.write_text(bomb_text(*BOMBS[shape]))
    manifest, error, seconds = timed_load(loader, path)
    assert seconds < MAX_SECONDS, f"{shape}: {seconds:.2f}s of CPU"
    if error is None:
        use(manifest)
    else:
        assert "alias" in str(error) or str(path) in str(error)
    if shape.startswith(("13x3", "9x9")):  # the biggest: their memory, too (tracemalloc is slow)
        assert peak_bytes(lambda: loader(path)) < MAX_BYTES


def test_a_40_mb_description_is_refused_quickly_with_a_clear_message(tmp_path: Path) -> None:
    folder = tmp_path / "skills" / "fuzz.huge"
    folder.mkdir(parents=True)
    (folder / "h.py").write_text("print('{}')\n")
    path = folder / "skill.yaml"
    with path.open("w") as f:
        f.write("name: fuzz.huge\nentrypoints:\n  - handler: h.py\ndescription: ")
        f.write("x" * (40 * 1024 * 1024))
        f.write("\n")
    started = time.monotonic()
    with pytest.raises(ManifestError) as refused:
        load_skill_manifest(path)
    assert time.monotonic() - started < 1.0
    message = str(refused.value)
    assert str(path) in message and f"larger than {MAX_MANIFEST_BYTES // 1024} KiB" in message, message
    assert len(message) < 500
    assert peak_bytes(lambda: load_skill_manifest(path)) < 2 * MAX_MANIFEST_BYTES + 1024 * 1024
    # The same through the catalog: reported, skipped, the server would go on.
    started = time.monotonic()
    catalog = load_catalog(Settings(workspace=tmp_path, skills_dirs=[tmp_path / "skills"], bundled=False))
    assert time.monotonic() - started < 1.0
    assert "fuzz.huge" not in catalog.skills
    assert any(p.path == str(path) and "larger than" in p.message for p in catalog.problems)


# -- catalogs ----------------------------------------------------------------------------------


@st.composite
def skill_folders(draw: Any) -> list[tuple[str, str, bool]]:
    """(folder name, skill.yaml text, whether a handler file is there)."""
    count = draw(st.integers(1, 5))
    folders = draw(
        st.lists(
            st.from_regex(r"[a-z][a-z0-9._-]{0,15}", fullmatch=True),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    return [(name, draw(manifest_texts()), draw(st.booleans())) for name in folders]


@settings(
    database=None,
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(skills=skill_folders(), agents=st.lists(manifest_texts(), max_size=3))
def test_a_catalog_of_random_folders_never_raises_and_accounts_for_every_skill(
    skills: list[tuple[str, str, bool]], agents: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        skills_dir, agents_dir = root / "skills", root / "agents"
        written = []
        for folder, text, with_handler in skills:
            (skills_dir / folder).mkdir(parents=True)
            (skills_dir / folder / "skill.yaml").write_text(text, errors="surrogatepass")
            written.append(skills_dir / folder / "skill.yaml")
            if with_handler:
                for name in ("h.py", "handler.py", f"{folder.replace('.', '_')}.py"):
                    (skills_dir / folder / name).write_text("print('{}')\n")
        for i, text in enumerate(agents):
            (agents_dir / f"agent{i}").mkdir(parents=True)
            (agents_dir / f"agent{i}" / "agent.yaml").write_text(text, errors="surrogatepass")
        agents_dir.mkdir(exist_ok=True)
        settings_ = Settings(
            workspace=root, skills_dirs=[skills_dir], agents_dirs=[agents_dir], bundled=False
        )
        started = time.thread_time()
        with rss_bounded():
            catalog = load_catalog(settings_, frozenset({"skills_list", "skill_run"}))
        seconds = time.thread_time() - started
        assert seconds < MAX_SECONDS * len(skills), f"{seconds:.2f}s of CPU for {len(skills)} skills"
        loaded = {s.manifest_path for s in catalog.skills.values()}
        reported = {p.path for p in catalog.problems}
        for path in written:
            assert path in loaded or str(path) in reported, f"{path} neither loaded nor reported"
        for skill in catalog.skills.values():
            assert skill.handler.resolve().is_relative_to(skill.directory.resolve())
            json.dumps(skill.input_schema, default=str)
        for problem in catalog.problems:
            assert problem.message.strip() and str(problem)
        catalog.fingerprint()


# -- findings ----------------------------------------------------------------------------------


def _catalog_with(tmp_path: Path, manifest: str, extra: Callable[[Path], None] = lambda folder: None) -> Any:
    folder = tmp_path / "skills" / "fuzz.found"
    folder.mkdir(parents=True)
    (folder / "skill.yaml").write_text(manifest)
    extra(folder)
    return load_catalog(Settings(workspace=tmp_path, skills_dirs=[tmp_path / "skills"], bundled=False))


def test_a_handler_name_with_a_nul_byte_is_reported_not_raised(tmp_path: Path) -> None:
    catalog = _catalog_with(tmp_path, 'name: fuzz.found\nentrypoints:\n  - handler: "a\\0b.py"\n')
    assert "fuzz.found" not in catalog.skills
    assert any("fuzz.found" in p.path for p in catalog.problems)


def test_a_handler_that_is_a_symlink_loop_is_reported_not_raised(tmp_path: Path) -> None:
    catalog = _catalog_with(
        tmp_path,
        "name: fuzz.found\nentrypoints:\n  - handler: h.py\n",
        lambda folder: (folder / "h.py").symlink_to("h.py"),
    )
    assert "fuzz.found" not in catalog.skills
    assert any("fuzz.found" in p.path for p in catalog.problems)


def test_a_manifest_with_a_hundred_thousand_bad_inputs_is_refused_quickly_and_briefly(tmp_path: Path) -> None:
    path = tmp_path / "skill.yaml"
    path.write_text("name: fuzz.found\ninputs: [" + ", ".join(["1"] * 100_000) + "]\n")
    _, error, seconds = timed_load(load_skill_manifest, path)
    assert error is not None
    assert len(str(error)) < 100_000, f"a {len(str(error)):,}-character error message"
    assert seconds < MAX_SECONDS, f"{seconds:.2f}s of CPU"
    assert peak_bytes(lambda: load_skill_manifest(path)) < MAX_BYTES


def test_a_manifest_just_under_the_size_cap_is_refused_in_under_a_second(tmp_path: Path) -> None:
    """130,000 small mappings in under 1 MiB: real manifests hold a few hundred values, so the node cap
    refuses it before any validation (it took ~3.5 s of CPU and ~250 MB to load)."""
    path = tmp_path / "skill.yaml"
    text = "name: fuzz.found\ndependencies: [" + ", ".join(["{a: 1}"] * 130_000) + "]\n"
    assert len(text.encode()) < MAX_MANIFEST_BYTES
    path.write_text(text)
    _, error, seconds = timed_load(load_skill_manifest, path)
    assert error is not None and "more than 20,000 values" in str(error), error
    assert seconds < MAX_SECONDS, f"{seconds:.2f}s of CPU for {len(text):,} bytes"


YAML_CONSTRUCTOR_ESCAPES = {
    "impossible_date": "version: 2024-02-30",  # implicit timestamp: ValueError (day is out of range)
    "impossible_month": "created: 2001-13-45",  # in an unknown field: ValueError
    "impossible_hour": "description: 2001-12-14 25:00:00",  # ValueError (hour must be in 0..23)
    "tagged_timestamp": "version: !!timestamp x",  # AttributeError ('NoneType' ... 'groupdict')
    "tagged_int": "version: !!int x",  # ValueError
    "tagged_empty_int": 'version: !!int ""',  # IndexError
    "tagged_float": "version: !!float x",  # ValueError
    "tagged_bool": "version: !!bool x",  # KeyError
}


@pytest.mark.parametrize("line", list(YAML_CONSTRUCTOR_ESCAPES.values()), ids=list(YAML_CONSTRUCTOR_ESCAPES))
def test_a_bad_date_or_tagged_scalar_is_a_manifest_error_not_a_crash(tmp_path: Path, line: str) -> None:
    path = tmp_path / "skill.yaml"
    path.write_text(f"name: fuzz.found\n{line}\n")
    with pytest.raises(ManifestError, match=r"skill\.yaml"):
        load_skill_manifest(path)
    catalog = _catalog_with(tmp_path, f"name: fuzz.found\n{line}\n")
    assert any("fuzz.found" in p.path for p in catalog.problems)
