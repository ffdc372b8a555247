"""The ``betty-mcp`` commands besides ``serve`` (main.py): inspect and run skills, agents and LLMs.

Output is for people by default; ``--json`` gives output for scripts.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from betty_mcp.cli.serve import SOURCE_HELP, Sources
from betty_mcp.cli.users import users_app
from betty_mcp.core.config import Settings, load_settings
from betty_mcp.core.errors import BettyError
from betty_mcp.services import Services

T = TypeVar("T")

app = typer.Typer(
    name="betty-mcp",
    help="Betty skills as MCP tools, plus any LLM. With no command: serve MCP over stdio.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
skills_app = typer.Typer(help="List, show and run skills.", no_args_is_help=True)
agents_app = typer.Typer(help="List and show agents.", no_args_is_help=True)
app.add_typer(skills_app, name="skills")
app.add_typer(agents_app, name="agents")
app.add_typer(users_app, name="users")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help=SOURCE_HELP["config"])]
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", help=SOURCE_HELP["workspace"])]


def _services(sources: Sources) -> Services:
    """The services as the server would build them from these flags (and betty.yaml)."""
    _setup_logging("error")
    try:
        services = Services(sources.settings())
        services.reload()
    except BettyError as exc:
        _fail(str(exc))
    return services


DEFAULT_SOURCES = Sources()


def _source_option(flag: str, kind: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(
        flag.replace("-", "_"),
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, typer.Option(f"--{flag}", help=SOURCE_HELP[flag])],
    )


_SOURCE_OPTIONS = [
    _source_option("config", Path | None),
    _source_option("workspace", Path | None),
    _source_option("skills-dir", list[Path] | None),
    _source_option("agents-dir", list[Path] | None),
    _source_option("betty-home", Path | None),
    _source_option("no-bundled", bool, False),
]


def with_sources(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the shared source options, handed to it as one ``sources: Sources``."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "sources"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        sources = Sources(**{p.name: kwargs.pop(p.name) for p in _SOURCE_OPTIONS})
        command(*args, sources=sources, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*own, *_SOURCE_OPTIONS])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}  # type: ignore[attr-defined]
    return wrapper


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="Log level for stderr.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", help="Debug logs on stderr, LiteLLM's and its HTTP client's included.")
]


def _setup_logging(level: str, *, verbose: bool = False) -> None:
    from betty_mcp.core.secrets import log_to_stderr

    log_to_stderr("debug" if verbose else level, verbose=verbose)


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _named(things: dict[str, T], name: str, kind: str) -> T:
    """The skill or agent called ``name``, or exit saying where to look."""
    if name not in things:
        _fail(f"no {kind} named '{name}'; see 'betty-mcp {kind}s list'")
    return things[name]


def _show(info: dict[str, Any], as_json: bool) -> None:
    """One thing's facts: JSON for scripts, else ``key: value`` lines (objects as indented JSON)."""
    if as_json:
        _print_json(info)
        return
    for key, value in info.items():
        shown = json.dumps(value, indent=2, ensure_ascii=False) if isinstance(value, dict | list) else value
        typer.echo(f"{key}: {shown}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Serve MCP (stdio by default, or streamable HTTP with --http); see 'betty-mcp serve --help'."""
    from betty_mcp.cli.serve import serve as serve_main

    serve_main(ctx.args)


@skills_app.command("list")
@with_sources
def skills_list(
    sources: Sources = DEFAULT_SOURCES,
    all_statuses: Annotated[
        bool, typer.Option("--all", help="Include draft, deprecated and archived skills.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List skills with their tool names."""
    betty = _services(sources)
    statuses = betty.settings.tools.statuses
    skills = [s for s in betty.catalog.skills.values() if all_statuses or s.manifest.status in statuses]
    if as_json:
        _print_json(
            [
                {
                    "name": s.name,
                    "tool": s.tool_name if s.tool_name in betty.catalog.tools else None,
                    "version": s.manifest.version,
                    "status": s.manifest.status,
                    "source": s.source,
                    "description": s.manifest.description.strip(),
                }
                for s in skills
            ]
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("skill", "tool", "version", "status", "description", box=None)
    for s in sorted(skills, key=lambda s: s.name):
        tool = s.tool_name if s.tool_name in betty.catalog.tools else "-"
        table.add_row(
            s.name, tool, s.manifest.version, s.manifest.status, s.manifest.description.strip()[:70]
        )
    Console().print(table)
    _print_problems(betty)


@skills_app.command("show")
@with_sources
def skills_show(
    name: str,
    sources: Sources = DEFAULT_SOURCES,
    as_json: JsonOpt = False,
) -> None:
    """Show one skill: manifest facts, its handler's interface, how each input reaches it, its schema."""
    betty, skill = _skill_with_interface(sources, name)
    interface = skill.interface
    invocations = betty.invocations
    info = {
        "name": skill.name,
        "tool": skill.tool_name,
        "version": skill.manifest.version,
        "status": skill.manifest.status,
        "source": skill.source,
        "directory": str(skill.directory),
        "handler": str(skill.handler),
        "interpreter": invocations.interpreter(skill),
        "description": skill.manifest.description.strip(),
        "interface": {
            "source": interface.source if interface else "manifest",
            "problem": interface.problem if interface else None,
            "unsupported": interface.unsupported if interface else None,
            "read_ms": interface.capture_ms if interface else None,
        },
        "mapping": {row["input"]: f"{row['argv']} ({row['origin']})" for row in invocations.describe(skill)},
        "mismatches": invocations.mismatches(skill),
        "input_schema": skill.input_schema,
        "output_schema": skill.output_schema,
    }
    _show(info, as_json)


@skills_app.command("argv")
@with_sources
def skills_argv(
    name: str,
    pairs: Annotated[list[str] | None, typer.Argument(help="Arguments as key=value.")] = None,
    sources: Sources = DEFAULT_SOURCES,
    as_json: JsonOpt = False,
) -> None:
    """Print the exact command line a call would run (nothing is run but the interface reading)."""
    import shlex

    from betty_mcp.run.invocation import check_paths

    betty, skill = _skill_with_interface(sources, name)
    arguments = _parse_pairs(pairs or [], skill.input_schema)
    try:
        betty.check_arguments(skill.input_schema, arguments, f"skill '{name}'")
        check_paths(skill, arguments, betty.settings)
        call = betty.invocations.build(skill, arguments)
    except BettyError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(
            {"argv": call.argv, "cwd": str(call.cwd), "stdin": call.stdin.decode() if call.stdin else None}
        )
        return
    typer.echo(f"cd {shlex.quote(str(call.cwd))} && {shlex.join(call.argv)}")
    if call.stdin:
        typer.echo(f"stdin: {call.stdin.decode()}")


def _skill_with_interface(sources: Sources, name: str) -> tuple[Services, Any]:
    betty = _services(sources)
    return betty, betty.invocations.with_interface(_named(betty.catalog.skills, name, "skill"))


def _parse_pairs(pairs: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """``key=value`` pairs; values of non-string inputs are read as JSON (``n=3``, ``tags=["a"]``)."""
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            _fail(f"argument '{pair}' is not key=value")
        declared = schema.get("properties", {}).get(key, {}).get("type")
        if declared == "string":
            arguments[key] = value
            continue
        try:
            arguments[key] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key] = value
    return arguments


@skills_app.command("run")
@with_sources
def skills_run(
    name: str,
    pairs: Annotated[list[str] | None, typer.Argument(help="Arguments as key=value.")] = None,
    sources: Sources = DEFAULT_SOURCES,
    as_json: JsonOpt = False,
) -> None:
    """Run a skill the way the server would, and print its result; exits 1 when it fails."""
    import anyio

    betty = _services(sources)
    skill = _named(betty.catalog.skills, name, "skill")
    arguments = _parse_pairs(pairs or [], skill.input_schema)
    try:
        result = anyio.run(betty.run_skill, skill, arguments)
    except BettyError as exc:
        _fail(str(exc))
    finally:
        betty.close()
    if as_json:
        _print_json(result.structured)
    else:
        typer.echo(json.dumps(result.structured, indent=2, ensure_ascii=False, default=str))
        typer.echo(f"{'ok' if result.ok else 'FAILED'} in {result.duration_ms:.0f} ms", err=True)
    raise typer.Exit(0 if result.ok else 1)


@agents_app.command("list")
@with_sources
def agents_list(
    sources: Sources = DEFAULT_SOURCES,
    as_json: JsonOpt = False,
) -> None:
    """List agents with their skills and reasoning mode."""
    betty = _services(sources)
    agents = sorted(betty.catalog.agents.values(), key=lambda a: a.name)
    if as_json:
        _print_json([betty.describe_agent(a) for a in agents])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("agent", "mode", "skills", "description", box=None)
    for a in agents:
        table.add_row(
            a.name,
            a.manifest.reasoning_mode,
            ", ".join(a.manifest.skills_available),
            a.manifest.description.strip()[:60],
        )
    Console().print(table)
    _print_problems(betty)


@agents_app.command("show")
@with_sources
def agents_show(
    name: str,
    sources: Sources = DEFAULT_SOURCES,
    as_json: JsonOpt = False,
) -> None:
    """Show one agent."""
    betty = _services(sources)
    _show(betty.describe_agent(_named(betty.catalog.agents, name, "agent")), as_json)


@app.command()
@with_sources
def validate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="skill.yaml/agent.yaml files or folders; default: every configured source."),
    ] = None,
    sources: Sources = DEFAULT_SOURCES,
    as_json: JsonOpt = False,
) -> None:
    """Validate manifests; exits 1 when anything is invalid."""
    from betty_mcp.core.catalog import Problem
    from betty_mcp.core.validation import validate_paths, validate_sources

    if paths:
        report = validate_paths(paths)
    else:
        betty = _services(sources)
        report = validate_sources(betty.catalog)
        for skill in betty.catalog.skills.values():  # reading a handler's interface runs it up to parse_args
            for mismatch in betty.invocations.mismatches(betty.invocations.with_interface(skill)):
                report.problems.append(Problem("warning", str(skill.manifest_path), mismatch))
    if as_json:
        _print_json(report.as_dict())
    else:
        for line in report.lines():
            typer.echo(line)
    raise typer.Exit(1 if report.errors else 0)


def _print_problems(betty: Any) -> None:
    for problem in betty.catalog.problems:
        typer.echo(str(problem), err=True)


# -- LLM commands ---------------------------------------------------------------------------

local_app = typer.Typer(help="The embedded local model.", no_args_is_help=True)
app.add_typer(local_app, name="local")


def _llm_settings(config: Path | None, workspace: Path | None) -> Settings:
    _setup_logging("error")
    try:
        return load_settings(config, workspace=workspace)
    except BettyError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def _llm_services(config: Path | None, workspace: Path | None, verbose: bool) -> Services:
    """The services for an LLM command (no catalog, runner or zygote is built for it)."""
    services = Services(_llm_settings(config, workspace))
    if verbose:
        _setup_logging("debug", verbose=True)
    return services


def _with_store(services: Services, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` in an event loop, then write what the store still has queued and close it."""
    import anyio

    async def main() -> T:
        try:
            return await work()
        finally:
            await services.aclose()

    return anyio.run(main)


def _read_store(services: Services, read: Callable[[], Awaitable[T]]) -> T:
    """``_with_store``, a BettyError (the database cannot be reached) ending the command with its message."""
    try:
        return _with_store(services, read)
    except BettyError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


@app.command()
def query(
    prompt: str,
    model: Annotated[str | None, typer.Option(help="An alias or provider/model.")] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens to generate.")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Ask an LLM through the router; prints the answer (exit 1 if every model failed)."""

    from betty_mcp.core.rules import failure_envelope

    services = _llm_services(config, workspace, verbose)
    arguments: dict[str, Any] = {"prompt": prompt}
    for key, value in (("model", model), ("system_prompt", system), ("max_tokens", max_tokens)):
        if value is not None:
            arguments[key] = value
    try:
        out = _with_store(services, lambda: services.query_llm(arguments))
        failed = None
    except BettyError as exc:
        out, failed = failure_envelope(str(exc), exc.code, **exc.details()), str(exc)
    if as_json:
        _print_json(out)
    elif failed is not None:
        typer.echo(f"error: {failed}", err=True)
    else:
        typer.echo(out["response"])
        cost = "unknown cost" if out["cost_usd"] is None else f"${out['cost_usd']:.6f}"
        hops = f", after {len(out['fallbacks'])} fallback(s)" if out["fallbacks"] else ""
        typer.echo(
            f"-- {out['model_used']}: {out['tokens_used']['total']} tokens, {cost}, "
            f"{out['latency_ms']:.0f} ms{hops}",
            err=True,
        )
        if out.get("note"):
            typer.echo(f"-- {out['note']}", err=True)
    raise typer.Exit(1 if failed is not None else 0)


@app.command()
def consensus(
    prompt: str,
    models: Annotated[
        str | None,
        typer.Option(
            "--models", help="Comma-separated aliases or provider/model ids; default: one per provider."
        ),
    ] = None,
    stance: Annotated[
        list[str] | None,
        typer.Option(
            "--stance", help="MODEL=STANCE: for, against, neutral or a stance in words; repeatable."
        ),
    ] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="A model that sums up the answers.")] = None,
    rounds: Annotated[
        int,
        typer.Option("--rounds", min=1, max=2, help="2: each model sees the others' answers and revises."),
    ] = 1,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt for every model.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens per answer (default 1024).")] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Refuse, before asking, a worst case above this (USD).")
    ] = None,
    blind: Annotated[
        bool, typer.Option("--blind/--named", help="Hide or show model names to the others and the judge.")
    ] = True,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Ask several LLMs at once, with live progress; answers side by side, then the judge's verdict."""

    from betty_mcp.core.rules import failure_envelope

    services = _llm_services(config, workspace, verbose)
    arguments: dict[str, Any] = {"prompt": prompt, "rounds": rounds, "blind": blind}
    if models:
        arguments["models"] = [m.strip() for m in models.split(",") if m.strip()]
    if stance:
        pairs = [s.partition("=") for s in stance]
        if any(not sep or not key for key, sep, _ in pairs):
            _fail("--stance takes MODEL=STANCE, e.g. --stance gpt-4o=for")
        arguments["stances"] = {key: value for key, _, value in pairs}
    for key, value in (
        ("judge", judge),
        ("system_prompt", system),
        ("max_tokens", max_tokens),
        ("max_cost_usd", max_cost),
    ):
        if value is not None:
            arguments[key] = value
    progress = _ConsensusProgress(live=not as_json)
    try:
        out = _with_store(services, lambda: progress.run(services, arguments))
        failed = out["error"] if out["status"] != "completed" else None
    except BettyError as exc:
        out, failed = failure_envelope(str(exc), exc.code, **exc.details()), str(exc)
    if as_json:
        _print_json(out)
    elif "answers" in out:
        _show_consensus(out)
    if failed is not None and not as_json:
        typer.echo(f"error: {failed}", err=True)
    raise typer.Exit(1 if failed is not None else 0)


class _ConsensusProgress:
    """The live table of ``betty-mcp consensus``: one row per model (and the judge), updated as each
    call ends, on stderr."""

    def __init__(self, *, live: bool) -> None:
        self.rows: dict[Any, list[str]] = {}
        self.live = live
        self._display: Any = None

    def _table(self) -> Any:
        from rich.table import Table

        table = Table("model", "stance", "", box=None)
        for model, stance, state in self.rows.values():
            table.add_row(model, stance, state)
        return table

    async def run(self, services: Services, arguments: dict[str, Any]) -> dict[str, Any]:
        plan = await services.plan_consensus(arguments)
        from rich.markup import escape

        for i, model in enumerate(plan.request.models):
            self.rows[i] = [escape(model), escape(plan.request.stance(i) or ""), "asking..."]
        if plan.request.judge:
            self.rows["judge"] = [escape(plan.request.judge), "judge", "waiting for the answers"]
        if not self.live:
            return await services.run_consensus(plan)
        from rich.console import Console
        from rich.live import Live

        console = Console(stderr=True)
        try:
            with Live(self._table(), console=console, refresh_per_second=8) as display:
                self._display = display
                return await services.run_consensus(plan, self.observe)
        finally:
            if not console.is_terminal:  # Live ends its last line only on a terminal
                console.line()

    async def observe(self, line: str, event: dict[str, Any]) -> None:
        key = "judge" if event["judge"] else event["slot"]
        row = self.rows[key]
        if event["error"] is not None:
            row[2] = f"[red]failed[/red]: {event['error_kind']}"
        else:
            cost = "" if event["cost_usd"] is None else f", ${event['cost_usd']:.6f}"
            verb = "answered" if event["round"] != 2 or event["judge"] else "revised"
            row[2] = (
                f"[green]{verb}[/green] by {event['model_used']} in {event['latency_ms'] / 1000:.1f}s, "
                f"{event['tokens']['total']} tokens{cost}"
            )
        if self._display is not None:
            self._display.update(self._table())


CONSENSUS_COLUMNS = 3  # answers shown side by side, at most this many a row


def _show_consensus(out: dict[str, Any]) -> None:
    """The answers side by side, then the judge's verdict (stdout), then the totals (stderr)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    console = Console()
    panels = []
    for a in out["answers"]:
        title = escape(a["model_used"] or a["model"]) + (
            f" [dim]({escape(a['stance'])})[/dim]" if a["stance"] else ""
        )
        body = escape(a["response"]) if a["error"] is None else f"[red]failed[/red]: {escape(a['error'])}"
        panels.append(Panel(body, title=title, title_align="left"))
    per_row = min(len(panels), CONSENSUS_COLUMNS)
    for start in range(0, len(panels), per_row):
        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in range(per_row):
            grid.add_column(ratio=1)
        row = panels[start : start + per_row]
        grid.add_row(*row, *[""] * (per_row - len(row)))
        console.print(grid)
    verdict = out.get("judge")
    if verdict:
        if verdict["error"] is not None:
            console.print(Panel(f"[red]failed[/red]: {escape(verdict['error'])}", title="judge"))
        else:
            parts = [
                f"[bold]{name}[/bold]: {escape(verdict[name])}"
                for name in ("agreement", "disagreement", "recommendation")
                if verdict[name]
            ]
            title = f"verdict of {escape(verdict['model_used'])}" + (
                " [dim](text)[/dim]" if verdict["format"] == "text" else ""
            )
            console.print(Panel("\n\n".join(parts), title=title, title_align="left"))
    totals = out["totals"]
    typer.echo(
        f"-- {totals['answered']}/{len(out['answers'])} answered, {totals['tokens']} tokens, "
        f"${totals['cost_usd']:.6f}, {totals['wall_ms'] / 1000:.1f}s; consensus {out['consensus_id']}",
        err=True,
    )


@app.command()
def models(config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List every model llm_query can use, whether it is ready, and its prices."""
    from betty_mcp.llm.listing import list_models

    listing = list_models(_llm_settings(config, workspace).router)
    if as_json:
        _print_json(listing)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("model", "aliases", "type", "status", "$/Mtok in/out", box=None)
    for m in listing["models"]:
        prices = m["prices_usd_per_mtok"]
        price = "-" if prices["input"] is None else f"{prices['input']:g}/{prices['output']:g}"
        table.add_row(m["id"], ", ".join(m["aliases"]), m["type"], escape(m["status"]), price)
    Console().print(table)
    typer.echo(f"default: {listing['default'] or 'routing rules, then the embedded model'}")


@app.command()
def usage(
    days: Annotated[int, typer.Option(help="How many days back.")] = 30,
    by: Annotated[str | None, typer.Option("--by", help="Only one view: day, model, caller or user.")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show LLM spend by day, model, caller and user, from the usage ledger."""
    from betty_mcp.llm.ledger import USAGE_VIEWS, format_usage

    if by is not None and by not in USAGE_VIEWS:
        _fail(f"--by takes one of {', '.join(USAGE_VIEWS)}, not {by!r}")
    services = _llm_services(config, workspace, False)
    report = _read_store(services, lambda: services.store.usage(days, by))
    if as_json:
        _print_json(report)
    else:
        typer.echo(format_usage(report, services.store.where))


@app.command()
@with_sources
def doctor(sources: Sources = DEFAULT_SOURCES, as_json: JsonOpt = False) -> None:
    """Check config, keys, endpoints, the embedded model and every handler; a fix for each problem."""
    from betty_mcp.cli.doctor import diagnose

    findings = diagnose(sources)
    if as_json:
        _print_json([f.as_dict() for f in findings])
    else:
        for f in findings:
            typer.echo(
                f"{'ok ' if f.ok else 'FIX'}  {f.check}: {f.detail}" + ("" if f.ok else f"\n     -> {f.fix}")
            )
    raise typer.Exit(0 if all(f.ok for f in findings) else 1)


@local_app.command("serve")
def local_serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8081,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    threads: Annotated[int, typer.Option(help="CPU threads.")] = 2,
) -> None:
    """Serve the embedded model as an OpenAI-compatible server (model name: gemma-3-270m)."""
    from betty_mcp.llm.embedded import EMBEDDED_ALIAS, model_path, readiness

    ready, detail = readiness()
    if not ready:
        _fail(detail)
    path = model_path()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(path),
        "--host",
        host,
        "--port",
        str(port),
        "--model_alias",
        EMBEDDED_ALIAS,
        "--n_threads",
        str(threads),
        "--chat_format",
        "chatml-function-calling",
    ]
    typer.echo(f"serving {path.name} as '{EMBEDDED_ALIAS}' on http://{host}:{port}/v1", err=True)
    os.execv(sys.executable, command)


# -- agent runs ---------------------------------------------------------------------------------


@app.command()
@with_sources
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="Runs taken at once (default: limits.run_workers, or 4 if 0)."),
    ] = None,
    log_level: LogLevelOpt = "info",
    sources: Sources = DEFAULT_SOURCES,
) -> None:
    """Run queued runs (agent_run and llm_consensus with wait=false) from the shared database, until
    stopped (SIGTERM or Ctrl-C: the runs it holds end as cancelled)."""
    import anyio

    _setup_logging(log_level)
    try:
        services = Services(sources.settings())
        services.reload()
    except BettyError as exc:
        _fail(str(exc))
    if not services.settings.database:
        _fail(
            "betty-mcp worker takes runs from a shared database: set database_url in betty.yaml "
            "(or $BETTY_MCP_DATABASE_URL) to a PostgreSQL URL"
        )
    taken = concurrency or services.settings.limits.run_workers or 4
    try:
        anyio.run(_work, services, taken)
    except ExceptionGroup as group:  # from the task group: the database does not answer, say
        failures = [exc for exc in group.exceptions if isinstance(exc, BettyError)]
        if not failures:
            raise
        _fail(str(failures[0]))
    except KeyboardInterrupt:
        pass


async def _work(services: Services, concurrency: int) -> None:
    import logging
    import signal

    import anyio

    async def stop_on_signal(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                scope.cancel()
                return

    async def warm_up() -> None:
        try:
            await services.warm_up()
        except Exception:  # only the first runs are slower for it
            logging.getLogger(__name__).exception("warming up failed")

    try:
        async with anyio.create_task_group() as tg:
            services.serve_runs(tg)
            tg.start_soon(stop_on_signal, tg.cancel_scope)
            tg.start_soon(warm_up)  # the zygote and LiteLLM's import, while the queue is being joined
            await services.work_queue(concurrency)
            tg.cancel_scope.cancel()
    finally:
        services.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await services.aclose()


db_app = typer.Typer(help="The database: its migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("status")
def db_status(config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Which migrations the database has, and which are pending (exit 1 while any is)."""
    services = _llm_services(config, workspace, False)
    status = _read_store(services, services.store.status)
    _show_migrations(status, as_json)
    raise typer.Exit(0 if status.current else 1)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Apply the pending migrations, once per database (safe while other instances start)."""
    services = _llm_services(config, workspace, False)

    async def upgrade() -> tuple[list[str], Any]:
        return await services.store.upgrade(), await services.store.status()

    applied, status = _read_store(services, upgrade)
    if not as_json:
        typer.echo(f"applied: {', '.join(applied)}" if applied else "already up to date")
    _show_migrations(status, as_json, applied)


def _show_migrations(status: Any, as_json: bool, applied: list[str] | None = None) -> None:
    if as_json:
        shown = {"backend": status.backend, "where": status.where, "applied": list(status.applied)}
        shown["pending"] = list(status.pending)
        if applied is not None:
            shown["applied_now"] = applied
        _print_json(shown)
        return
    typer.echo(f"{status.backend} database {status.where}")
    typer.echo(f"  applied: {', '.join(status.applied) or 'none'}")
    typer.echo(f"  pending: {', '.join(status.pending) or 'none'}")


runs_app = typer.Typer(help="Agent run traces.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


@app.command()
@with_sources
def run(
    agent: str,
    task: str,
    model: Annotated[str | None, typer.Option(help="Use this model instead of the agent's own.")] = None,
    context: Annotated[str | None, typer.Option(help="A JSON object of facts for the agent.")] = None,
    max_steps: Annotated[int, typer.Option(help="Most model calls.")] = 10,
    sources: Sources = DEFAULT_SOURCES,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run an agent on a task with live progress; exits non-zero unless the run completed."""
    from rich.console import Console

    from betty_mcp.agent import RunLimits, RunRequest
    from betty_mcp.agent.runs import step_line

    facts = None
    if context:
        try:
            facts = json.loads(context)
        except json.JSONDecodeError as exc:
            _fail(f"--context is not JSON: {exc.msg}")
        if not isinstance(facts, dict):
            _fail("--context must be a JSON object")
    betty = _services(sources)
    if verbose:
        _setup_logging("debug", verbose=True)
    console = Console(stderr=True)

    async def on_step(step: Any, state: Any) -> None:
        if not as_json:
            cost = f", ${state.cost_usd:.4f}" if state.cost_usd else ""
            console.print(f"{step_line(step)}  [dim]({state.tokens} tokens{cost})[/dim]", highlight=False)

    async def go() -> Any:
        with console.status(f"{agent} is working...", spinner="dots") if not as_json else _nothing():
            request = RunRequest(agent, task, facts, model, RunLimits(max_steps=max_steps))
            return await betty.run_agent(request, on_step=on_step)

    try:
        result = _with_store(betty, go)
    except BettyError as exc:
        _fail(str(exc))
    finally:
        betty.close()
    if as_json:
        _print_json(result.as_dict())
    else:
        if result.answer:
            typer.echo(result.answer)
        totals = result.totals
        console.print(
            f"[bold]{result.status}[/bold]: {totals['steps']} steps, {totals['tokens']} tokens, "
            f"${totals['cost_usd']:.4f}, {totals['ms'] / 1000:.1f}s; run {result.run_id}"
            + (f"; {result.error}" if result.error else ""),
            highlight=False,
        )
    raise typer.Exit(0 if result.status == "completed" else 1)


def _nothing() -> Any:
    from contextlib import nullcontext

    return nullcontext()


@runs_app.command("list")
def runs_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's runs.")] = None,
    workspace: WorkspaceOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Runs traced in the workspace or the shared database (every user's: the CLI is the local admin),
    newest first."""
    from betty_mcp.agent import list_runs

    services = _llm_services(config, workspace, False)
    runs = _read_store(services, lambda: list_runs(services.store, user=user))
    if as_json:
        _print_json(runs)
        return
    for r in runs:
        typer.echo(
            f"{r['run_id']}  {r['user']:<12} {r['status']:<15} {r['agent'] or '?':<16} "
            f"{r['steps'] or 0:>3} steps  {(r['task'] or '')[:50]}"
        )
    if not runs:
        typer.echo("no runs yet")


@runs_app.command("show")
def runs_show(
    run_id: str, workspace: WorkspaceOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """One run's trace: every model request and response and every skill call."""
    from betty_mcp.core.rules import run_id_problem

    services = _llm_services(config, workspace, False)
    found = None if run_id_problem(run_id) else _read_store(services, lambda: services.store.events(run_id))
    if found is None:
        _fail(f"no run '{run_id}'; see 'betty-mcp runs list'")
    events = found or []
    if as_json:
        _print_json(events)
        return
    for e in events:
        detail = {k: v for k, v in e.items() if k not in ("event", "ts")}
        typer.echo(
            f"{e.get('ts', '')}  {e.get('event', '?'):<14} {json.dumps(detail, ensure_ascii=False)[:300]}"
        )


# -- the gateway: Claude Code through the llm_router -------------------------------------------------

HostOpt = Annotated[str, typer.Option("--host", help="Bind address; anything but loopback needs a token.")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Token clients must send (bearer or x-api-key); or $BETTY_MCP_TOKEN."),
]


@app.command()
def gateway(
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (default 8787).")] = 8787,
    token: TokenOpt = None,
    allowed_host: Annotated[
        list[str] | None, typer.Option("--allowed-host", help="Extra Host accepted, e.g. gw.example.com:443.")
    ] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    log_level: LogLevelOpt = "info",
    verbose: VerboseOpt = False,
) -> None:
    """Serve an Anthropic Messages endpoint (for Claude Code) that answers through the llm_router."""
    from betty_mcp.cli.claude import run_gateway

    run_gateway(
        host=host,
        port=port,
        token=token,
        allowed_hosts=allowed_host or [],
        config=config,
        workspace=workspace,
        log_level=log_level,
        verbose=verbose,
    )


export_app = typer.Typer(help="Write files for other tools: Claude Code subagents, claude-code-router.")
app.add_typer(export_app, name="export")


@export_app.command("claude-agents")
@with_sources
def export_claude_agents(
    out: Annotated[Path, typer.Option("--out", help="Folder for the subagent files.")] = Path(
        ".claude/agents"
    ),
    sources: Sources = DEFAULT_SOURCES,
    as_json: JsonOpt = False,
) -> None:
    """One Claude Code subagent per active Betty agent (tools: its skills as mcp__betty__<tool>)."""
    from betty_mcp.gateway.exports import claude_agent_files

    files = claude_agent_files(_services(sources))
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        (out / f.filename).write_text(f.text, encoding="utf-8")
    if as_json:
        _print_json(
            [
                {"agent": f.agent, "file": str(out / f.filename), "tools": f.tools, "missing": f.missing}
                for f in files
            ]
        )
        return
    for f in files:
        typer.echo(f"{out / f.filename}: {f.agent}, {len(f.tools)} tool(s)")
        if f.missing:
            typer.echo(
                f"  warning: no tool for {', '.join(f.missing)} (missing, inactive or excluded)", err=True
            )


@export_app.command("ccr")
def export_ccr(
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write config.json (default: stdout).")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="claude-code-router's port.")] = 3456,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Write a claude-code-router config.json equivalent to the llm_router block."""
    from betty_mcp.gateway.exports import ccr_config

    text = json.dumps(ccr_config(_llm_settings(config, workspace).router, port=port), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}", err=True)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def claude(ctx: typer.Context) -> None:
    """Run Claude Code through the gateway, with betty's MCP server; see 'betty-mcp claude --betty-help'."""
    from betty_mcp.cli.claude import run_claude

    raise typer.Exit(run_claude(ctx.args))
