"""What the commands print: tables and JSON on stdout, progress and failures on stderr.

Built on the result objects' own `to_json()`. Identifiers a user copies (slugs, tags, digests,
commits, URLs) are never folded or cut: when stdout is not a terminal the tables take the width they
need, and on a terminal those columns overflow rather than wrap. Failures are always said on stderr,
also under `--quiet` and `--json`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cccatalog.logs import LOGGER_NAME, emits_json

if TYPE_CHECKING:
    from pathlib import Path

    from rich.progress import TaskID

    from cccatalog.check import CheckReport
    from cccatalog.gitmirror.sync import MirrorSyncer, RepoResult, RepoTask
    from cccatalog.jobs import SyncReport
    from cccatalog.oci.copy import CopyProgress
    from cccatalog.oci.resolve import RefResolution
    from cccatalog.probe import ProbeResult
    from cccatalog.status import RepoStatus, StatusReport
    from cccatalog.transfer.export import ExportResult
    from cccatalog.transfer.importer import ImportResult

log = logging.getLogger(LOGGER_NAME)

_UNBOUNDED = 100_000  # width of a console that is not a terminal: nothing wraps


def console(stream: TextIO | None = None) -> Console:
    stream = stream or sys.stdout
    width = None if stream.isatty() else _UNBOUNDED
    return Console(file=stream, soft_wrap=False, width=width, highlight=False)


def _table(title: str | None, columns: Sequence[str], identifiers: Sequence[str]) -> Table:
    table = Table(title=escape(title) if title else None, title_justify="left")
    for column in columns:
        if column in identifiers:
            table.add_column(column, no_wrap=True, overflow="ignore")
        else:
            table.add_column(column, overflow="fold")
    return table


def write_json(payload: object, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(json.dumps(payload, indent=2) + "\n")


# --- sync ----------------------------------------------------------------------------------------


def sync_report(report: SyncReport, *, as_json: bool, quiet: bool) -> None:
    for warning in report.warnings:
        log.warning("%s", warning)
    for image in report.images:  # git results are narrated as each repo ends
        if image.failed:
            log.error("%s: images: %s", image.slug, image.error)
        else:
            log.info("%s: images: %d refs, latest %s", image.slug, image.refs, image.latest_tag or "none")
    _narrate_mirrors(report)
    if as_json:
        write_json(report.to_json())
        return
    if quiet:
        return
    out = console()
    if report.git:
        table = _table("git mirrors", ("slug", "action", "head", "duration", "error"), ("slug", "head"))
        styles = {"failed": "red", "skipped": "yellow", "unchanged": "dim"}
        for r in report.git:
            style = styles.get(r.action.value, "green")
            table.add_row(
                r.slug,
                f"[{style}]{r.action.value}[/]",
                (r.head_commit or "")[:12],
                f"{r.duration_s:.1f}s",
                escape(r.error or r.note or ""),
            )
        out.print(table)
    if report.images:
        columns = ("slug", "refs", "inactive", "latest", "stable", "error")
        table = _table("images", columns, ("slug", "latest", "stable"))
        for i in report.images:
            problem = f"[red]{escape(i.error)}[/]" if i.error else escape(i.note or "")
            table.add_row(
                escape(i.slug),
                str(i.refs),
                str(i.deactivated),
                escape(i.latest_tag or ""),
                escape(i.stable_tag or ""),
                problem,
            )
        out.print(table)
    if report.mirrors and report.mirrors.destinations:
        out.print(_destinations_table(report))


def _narrate_mirrors(report: SyncReport) -> None:
    """One line per destination (an error line when a copy failed, and one per failure)."""
    if report.mirrors and report.mirrors.skipped:
        log.warning("destinations: %s", report.mirrors.skipped)
        return
    for d in report.mirrors.destinations if report.mirrors else ():
        line = (
            f"destination {d.name}: {d.copied} copied, {d.already_there} already there, {d.failed} failed "
            f"({d.jobs_enqueued} new jobs, {d.refs_already_mirrored} builds mirrored before)"
        )
        log.log(logging.ERROR if d.failed else logging.INFO, "%s", line)
        for error in d.errors:
            log.error("destination %s: %s", d.name, error)


def _destinations_table(report: SyncReport) -> Table:
    columns = ("destination", "new jobs", "copied", "already there", "failed", "mirrored before")
    table = _table("destinations", columns, ("destination",))
    for d in report.mirrors.destinations if report.mirrors else ():
        failed = f"[red]{d.failed}[/]" if d.failed else "0"
        table.add_row(
            d.name,
            str(d.jobs_enqueued),
            str(d.copied),
            str(d.already_there),
            failed,
            str(d.refs_already_mirrored),
        )
    return table


def narrate(result: RepoResult) -> None:
    if result.failed:
        log.error("%s: %s", result.slug, result.error)
    else:
        log.info("%s: %s %s", result.slug, result.action, result.head_commit or "")


def sync_progress(*, quiet: bool) -> Callable[[MirrorSyncer, list[RepoTask]], list[RepoResult]]:
    """Runs the git half: a progress bar on a terminal, one narrated line per repo otherwise."""

    def run(syncer: MirrorSyncer, tasks: list[RepoTask]) -> list[RepoResult]:
        if quiet or not sys.stderr.isatty() or not tasks or emits_json():
            return syncer.run(tasks, on_done=narrate)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("[bold]sync"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=True,
        )
        with progress:
            bar = progress.add_task("", total=len(tasks))

            def done(result: RepoResult) -> None:
                narrate(result)
                progress.update(bar, advance=1, description=f"{result.slug} {result.action}")

            return syncer.run(tasks, on_done=done)

    return run


@contextmanager
def copy_progress(what: str, *, quiet: bool) -> Iterator[Callable[[CopyProgress], None] | None]:
    """Image copies (`export`, `import`, `sync` to destinations): a bar per image, in bytes, on a
    terminal; nothing otherwise (each image is narrated when it is done). The bars appear with the
    first copy, so nothing is shown while a run copies nothing (or while `sync`'s git bar is up)."""
    if quiet or not sys.stderr.isatty() or emits_json():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        transient=True,
    )
    bars: dict[str, TaskID] = {}
    lock = threading.Lock()

    def update(p: CopyProgress) -> None:
        with lock:
            if not bars:
                progress.start()
            if p.image not in bars:
                bars[p.image] = progress.add_task(p.image, total=p.bytes_total)
            progress.update(bars[p.image], completed=p.bytes_done, total=p.bytes_total)

    try:
        yield update
    finally:
        with lock:
            if bars:
                progress.stop()


# --- resolve-latest ------------------------------------------------------------------------------


def resolutions(
    name: str,
    found: Sequence[RefResolution],
    requests: dict[str, int],
    *,
    as_json: bool,
    verbose: bool,
) -> None:
    if as_json:
        refs = [r.to_json() for r in found]
        write_json({"repository": name, "refs": refs, "requests": sum(requests.values())})
        return
    columns = ("ref", "newest tag", "built_at", "source", "digest", "candidates")
    table = _table(name, columns, ("ref", "newest tag", "built_at", "digest"))
    for r in found:
        n = r.newest.to_json()
        table.add_row(
            escape(r.ref),
            escape(n["tag"]),
            n["built_at"] or "unknown",
            escape(n["built_at_source"]),
            escape(n["digest"] or ""),
            str(len(r.candidates)),
        )
    console().print(table)
    if verbose:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(requests.items()))
        note(f"{sum(requests.values())} registry requests ({detail})", requests=requests)


# --- check ---------------------------------------------------------------------------------------


def check_report(report: CheckReport, *, as_json: bool) -> None:
    if as_json:
        write_json(report.to_json())
        return
    table = _table(f"check {report.config}", ("status", "subject", "detail"), ("subject",))
    styles = {"ok": "green", "warn": "yellow", "fail": "red"}
    for c in report.checks:
        table.add_row(f"[{styles[c.status.value]}]{c.status.value}[/]", escape(c.subject), escape(c.detail))
    console().print(table)
    failed = [c for c in report.checks if c.status.value == "fail"]
    warned = sum(c.status.value == "warn" for c in report.checks)
    verdict = (
        f"{len(failed)} failed, {warned} warnings" if failed or warned else "everything checked is ready"
    )
    sys.stdout.write(f"{verdict}\n")


def check_failures(report: CheckReport) -> None:
    """What failed, on stderr: one `error:` line, then one line per failed check."""
    failed = [c for c in report.checks if c.status.value == "fail"]
    if failed:
        noun = "check" if len(failed) == 1 else "checks"
        error(f"{len(failed)} {noun} failed", details=[f"  {c.subject}: {c.detail}" for c in failed])


# --- manifest, export, import --------------------------------------------------------------------


def manifest(data: bytes, out: Path | None) -> None:
    """The site manifest to stdout, or to `out` in one rename."""
    if out is None:
        sys.stdout.write(data.decode())
        return
    from cccatalog.atomic import write_atomic

    write_atomic(out, data)
    log.info("wrote %s", out)


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.1f} KiB"


def export_result(result: ExportResult, *, as_json: bool, quiet: bool) -> None:
    if as_json:
        write_json(result.to_json())
        return
    signed = "signed" if result.signed else "unsigned"
    sys.stderr.write(
        f"wrote {result.path} ({_size(result.size)}, {signed}, since {result.since or 'nothing: full'})\n"
    )
    if quiet:
        return
    table = _table("export", ("slug", "carries", "refs moved", "bundle"), ("slug",))
    for r in result.repos:
        table.add_row(escape(r.slug), r.kind, str(r.refs_changed), _size(r.size) if r.bundle else "")
    console().print(table)
    sys.stdout.write(
        f"{result.collections} collections with image refs, {result.images} images in images.txt\n"
    )
    if result.carried is not None:
        blobs = sum(c.blobs for c in result.carried)
        sent = sum(c.bytes for c in result.carried)
        sys.stdout.write(
            f"images: {len(result.carried)} carried, with the {blobs} blobs ({_size(sent)}) the site lacks\n"
        )


def import_result(result: ImportResult, *, as_json: bool, quiet: bool) -> None:
    for r in result.repos:
        if r.error:
            log.error("%s: %s", r.slug, r.error)
    for image in result.images or []:
        if image.error:
            log.error(
                "%s: image %s not pushed, its catalog rows kept: %s", image.slug, image.tag, image.error
            )
    if as_json:
        write_json(result.to_json())
        return
    if not result.changed and not result.failed:
        sys.stderr.write(f"{result.archive}: already applied, nothing changed\n")
    if quiet:
        return
    table = _table("import", ("slug", "action", "head", "refs moved", "error"), ("slug", "head"))
    styles = {"failed": "red", "unchanged": "dim"}
    for r in result.repos:
        style = styles.get(r.action, "green")
        table.add_row(
            r.slug,
            f"[{style}]{r.action}[/]",
            (r.head_commit or "")[:12],
            str(r.refs_changed),
            escape(r.error or ""),
        )
    console().print(table)
    if result.images is not None:
        actions = Counter(i.action for i in result.images)
        blobs = sum(i.blobs_pushed for i in result.images)
        sys.stdout.write(
            f"images: {actions['pushed']} pushed ({blobs} blobs), {actions['present']} there already, "
            f"{actions['failed']} failed\n"
        )
    replaced = ", ".join(result.catalog_replaced) or "none changed"
    sys.stdout.write(f"catalog: {replaced}; signed by {result.signed_by or 'nobody (--allow-unsigned)'}\n")


# --- status --------------------------------------------------------------------------------------

_FRESHNESS_STYLE = {"fresh": "green", "failing": "yellow", "stale": "red", "baked": "blue"}


def _last_success(r: RepoStatus) -> str:
    from cccatalog.status import format_age

    if r.age_seconds is not None:
        return f"{format_age(r.age_seconds)} ago"
    if r.freshness.value == "baked":
        return "as baked" if r.baked_at is None else f"baked {r.baked_at:%Y-%m-%d}"
    return "never"


def status_report(report: StatusReport, *, as_json: bool, quiet: bool) -> None:
    """The repositories and collections on stdout (a table, or JSON); what failed, on stderr."""
    from cccatalog.status import format_age

    if as_json:
        write_json(report.to_json())
    elif not quiet:
        out = console()
        for line in report.notes:
            note(line, level=logging.WARNING)
        if report.repos:
            columns = ("slug", "state", "head", "branch", "last success", "last error")
            table = _table("repositories", columns, ("slug", "head", "branch"))
            for r in report.repos:
                style = _FRESHNESS_STYLE[r.freshness.value]
                table.add_row(
                    escape(r.slug),
                    f"[{style}]{r.freshness.value}[/]",
                    (r.head_commit or "")[:12],
                    escape(r.default_branch or ""),
                    _last_success(r),
                    escape(r.last_error or ""),
                )
            out.print(table)
        if report.collections:
            table = _table(
                "CodeCollections",
                ("slug", "latest", "stable", "refs", "poll error"),
                ("slug", "latest", "stable"),
            )
            for c in report.collections:
                table.add_row(
                    escape(c.slug),
                    escape(c.latest.tag if c.latest else ""),
                    escape(c.stable.tag if c.stable else ""),
                    str(c.active_refs),
                    escape(c.poll_error or ""),
                )
            out.print(table)
        bad = len(report.problems)
        verdict = (
            f"{bad} of {len(report.repos)} repositories need attention"
            if bad
            else "no repository is stale or failing"
        )
        sys.stdout.write(f"{verdict} (max age {format_age(report.budget_seconds)})\n")
    if report.problems:
        error(
            f"{len(report.problems)} of {len(report.repos)} repositories are stale or failing",
            details=[f"  {p}" for p in report.problems],
        )


# --- errors --------------------------------------------------------------------------------------


def error(
    message: str, *, details: Sequence[str] = (), exc: str | None = None, stream: TextIO | None = None
) -> None:
    """`error: <message>` first, then any detail lines (usage, hints), then `exc` (a traceback).
    Under `--log-format json` it is one log line instead, with `details` and `exc` as its fields."""
    if stream is None and emits_json():
        fields: dict[str, object] = {"details": [d.strip("\n") for d in details]} if details else {}
        if exc:
            fields["exc"] = exc
        log.error("%s", message, extra=fields)
        return
    stream = stream or sys.stderr
    color = stream.isatty()
    head = "\x1b[31merror:\x1b[0m" if color else "error:"
    stream.write(f"{head} {message}\n")
    for line in [*details, *([exc] if exc else [])]:
        stream.write(line if line.endswith("\n") else line + "\n")


def note(line: str, *, level: int = logging.INFO, **fields: object) -> None:
    """A line of narration on stderr: as it is, or a JSON log line under `--log-format json`."""
    if emits_json():
        log.log(level, "%s", line, extra=fields)
    else:
        sys.stderr.write(line + "\n")


def say(line: str) -> None:
    """A line for the person at the terminal, on stdout at once (a server may run next)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def probe_answer(result: ProbeResult) -> None:
    """`probe`: the status on the first line, the body after it; a failing status said on stderr."""
    sys.stdout.write(f"{result.status}\n{result.body.rstrip()}\n")
    if not result.ok:
        error(f"{result.url}: answered {result.status}")


def api_answer(status: int, body: object) -> None:
    """`serve --get`: the status on the first line, the JSON body after it."""
    sys.stdout.write(f"{status}\n{json.dumps(body, indent=2)}\n")
