"""`twophase chaos|cone|linear|sweep|submit|jobs|models|datasets|presets|settings|cache|...`: the app, in a shell.

Every setting's flag is generated from its spec (settings.py), so the CLI, the app's form and the
reproduce command (`command_for`) can never drift apart. Bad input exits with status 2 and one line
that says what to change, before anything is trained or written.

Past 350 lines on purpose: every subcommand's parsing and its one-line error handling in one place,
so no command can miss the common checks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twophase_core.execution.placement import EXECUTORS, check_placement, resolve_executor
from twophase_core.experiments import registry
from twophase_core.experiments.presets import PRESETS, preset, sweep_replicates
from twophase_core.settings import config as conf
from twophase_core.settings.spec import ConfigError, Spec, bounds_text, format_value

if TYPE_CHECKING:
    from twophase_core.experiments.result import Result
    from twophase_core.storage.store import Store

PIPE_CLOSED = 141  # the status a shell reports for a command ended by SIGPIPE (128 + 13)
METAVARS = {"choice": "NAME", "int": "N", "float": "X", "text": "TEXT", "step": "STEP", "steps": "STEPS",
            "ints": "N,N,...", "window": "START,END"}
PLUGIN_ALLOWED = ", or a plugin: a name `twophase {0}s` lists, or MODULE:CALLABLE (not in the app)"


def flag_help(spec: Spec) -> str:
    """A setting's help with its allowed values: the same words in --help and the table of docs/settings.md."""
    extra = []
    if spec.choices:
        extra.append("one of " + ", ".join(spec.choices) + (PLUGIN_ALLOWED.format(spec.plugin) if spec.plugin else ""))
    rng = bounds_text(spec)
    if rng and spec.type not in ("steps", "window"):
        extra.append(rng)
    if spec.type in ("step", "steps", "window"):
        extra.append("steps: 500, 500it, 2ep, 2ep50it")
    if spec.type in ("steps", "ints"):
        extra.append("a list: comma or space separated")
    return spec.help + (f" ({'; '.join(extra)})" if extra else "")


def add_setting_flags(p: argparse.ArgumentParser, kind: str) -> None:
    """One flag per setting of `kind` (nested training fields included), generated from its spec."""
    for name, (spec, _) in conf.settings_of(registry.get(kind).config).items():
        flags = [spec.flag(name), *spec.aliases]
        if spec.type == "bool":
            p.add_argument(*flags, dest=name, default=None, action=argparse.BooleanOptionalAction, help=spec.help)
        else:
            p.add_argument(*flags, dest=name, default=None, metavar=METAVARS[spec.type], help=flag_help(spec))


def build_config(kind: str, args: argparse.Namespace) -> conf.ExperimentConfig:
    """The preset, then every flag given; validated. Values are parsed as the app's form parses them."""
    cfg = preset(args.preset, kind)
    given = {n: getattr(args, n) for n in conf.settings_of(registry.get(kind).config)
             if getattr(args, n, None) is not None}
    if given.get("device") == "auto":
        from twophase_core.science.train import resolve_device

        given["device"] = resolve_device("auto").type
    return conf.with_settings(cfg, given)


def settings_table() -> str:
    """The table of every setting (docs/settings.md), generated from the specs (a test keeps the file current)."""
    rows = ["| setting | flag | experiments | default (demo) | allowed | what it does |",
            "| --- | --- | --- | --- | --- | --- |"]
    seen: dict[str, list[str]] = {}
    for kind in registry.names():
        for name in conf.settings_of(registry.get(kind).config):
            seen.setdefault(name, []).append(kind)
    for name, kinds in seen.items():
        spec, _ = conf.settings_of(registry.get(kinds[0]).config)[name]
        default = format_value(spec, conf.flat(preset("demo", kinds[0]))[name])
        allowed = ", ".join(spec.choices) if spec.choices else bounds_text(spec)
        allowed += PLUGIN_ALLOWED.format(spec.plugin) if spec.plugin else ""
        if spec.type == "step":
            allowed = f"a step {allowed}"
        elif spec.type in ("steps", "window"):
            allowed = "steps within the run" + (", may be empty" if spec.allow_empty else "")
        elif spec.type == "ints":
            allowed = f"whole numbers {allowed}"
        which = "all" if len(kinds) == len(registry.names()) else ", ".join(kinds)
        flags = " ".join(f"`{f}`" for f in (spec.flag(name), *spec.aliases))
        cells = [f"`{name}`", flags, which, f"`{default}`" if default else "(empty)", allowed or spec.type, spec.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


class _Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, quiet: bool):
        self.quiet, self.t, self.tty, self.stage = quiet, time.time(), sys.stderr.isatty(), ""

    def __call__(self, frac: float, stage: str) -> None:
        if self.quiet:
            return
        if not self.tty:  # a log file gets one line per stage, not carriage returns
            if stage != self.stage:
                self.stage = stage
                sys.stderr.write(f"{time.time() - self.t:7.1f}s {frac * 100:5.1f}% {stage}\n")
            return
        n = int(frac * 30)
        el = time.time() - self.t
        eta = f" eta {el / frac - el:5.0f}s" if 0.02 < frac < 1 else ""
        sys.stderr.write(f"\r[{'#' * n}{'.' * (30 - n)}] {frac * 100:5.1f}% {el:6.1f}s{eta} {stage[:40]:<40}")
        sys.stderr.flush()
        if frac >= 1:
            sys.stderr.write("\n")


def _experiment_parser(sub: argparse._SubParsersAction, kind: str, help_: str, sweep: bool = False) -> None:
    p = sub.add_parser(kind, help=help_, description=f"{help_}. Every setting of the preset can be overridden; "
                       "lists are comma or space separated; steps accept 500, 500it, 2ep, 2ep50it.")
    if sweep:
        p.add_argument("--vary", action="append", default=[], metavar="FIELD=V1,V2",
                       help="a setting and its values (repeatable); a list setting takes alternatives split by |")
        p.add_argument("--seeds", action="append", default=[], metavar="FIELD",
                       help="settings that are replicate seeds, not settings (default: data_seed and init_seed "
                            "together, one value per replicate)")
        p.add_argument("--replicates", default=None, metavar="K",
                       help="replicates per setting when the seeds are not varied: seed, seed+1, ... (default: the "
                            "preset's, else 1)")
        p.add_argument("--refine", type=float, default=None, metavar="BUDGET",
                       help="chaos: after the grid given, add t0 where t* is not yet found (and raise T past it) "
                            "until it is, or BUDGET progress units (SGD steps and evaluations) are spent")
        p.add_argument("--workers", default=None, metavar="N",
                       help="local: processes the sweep's tasks run in (base runs, rows, kernels, switch times), "
                            "1 for this process only (default $TWOPHASE_SWEEP_WORKERS, else one per core for a sweep "
                            "of more than a few seconds)")
    p.add_argument("--preset", default="demo", help=f"one of {', '.join(PRESETS)} (default demo)")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON to OUT ('-' for stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cache-dir", help="result store (default $TWOPHASE_CACHE_DIR, else the checkout's cache/)")
    p.add_argument("--print-config", action="store_true", help="print the resolved, validated config as JSON and exit")
    # every kind has units of work Ray can spread: chaos rows, cone kernels, linear switch times, sweep points
    p.add_argument("--executor", choices=EXECUTORS, default=None,  # None: _resolve_executor reads the environment
                   help="where the work runs: local (this process) or ray (tasks on $TWOPHASE_RAY_ADDRESS, "
                        "default a local Ray); default $TWOPHASE_EXECUTOR or local")
    add_setting_flags(p, kind)


def _join_negative_values(argv: list[str]) -> list[str]:
    """'--eps -1e-7' -> '--eps=-1e-7': argparse would take the value for a flag and say 'expected one
    argument'; joined, the value reaches validation and gets the real message (eps must be >= 0)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (tok.startswith("--") and "=" not in tok and nxt is not None and nxt.startswith("-") and len(nxt) > 1
                and (nxt[1].isdigit() or nxt[1] == ".")):
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def check_output_path(path: str | None) -> None:
    """Refuse an output file that cannot be written, before anything is computed."""
    if not path or path == "-":
        return
    target = Path(path)
    if target.exists() and not target.is_file():
        raise ConfigError("--json", path, "is not a regular file: give a file path (or '-' for stdout)")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError("--json", path, f"folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ConfigError("--json", path, "is not writable")


def open_store(cache_dir: str | None, heal: bool = True) -> Store:
    """The store at `cache_dir` (default location if None), or a one-line ConfigError saying why not.
    `heal=False` (cache check, repair, clear): opened as it is, so what is wrong is reported, not fixed."""
    from twophase_core.storage.store import ENV as ENV_CACHE
    from twophase_core.storage.store import Store, default_root

    root = Path(cache_dir) if cache_dir else default_root()
    named = "--cache-dir" if cache_dir else ENV_CACHE if os.environ.get(ENV_CACHE) else "store"
    if root.exists() and not root.is_dir():
        raise ConfigError(named, str(root), "is a file, not a folder")
    try:
        return Store(root, heal=heal)
    except OSError as e:
        raise ConfigError(named, str(root), f"cannot be used as a store: {e.strerror or e}") from None


def _write_json(path: str | None, payload: object) -> None:
    if path == "-":
        print(json.dumps(payload))
    elif path:
        try:
            with open(path, "w") as f:
                json.dump(payload, f)
        except OSError as e:
            raise ConfigError("--json", path, f"could not be written: {e.strerror or e}") from None
        print(f"wrote {path}", file=sys.stderr)


def _cache(action: str, cache_dir: str | None, dry_run: bool = False) -> int:
    """`twophase cache info|check|repair|clear`: check and repair open the store without healing it
    first, so they report (and fix) what is really there; clear works on any store, full or damaged.
    Records are checked by type too (`record_types`): a bad one is named by check, moved aside by repair."""
    from twophase_core.storage import upkeep

    if action == "info":
        print(json.dumps(upkeep.info(open_store(cache_dir)), indent=2))
        return 0
    store = open_store(cache_dir, heal=False)
    if action == "check":
        r = _with_records(store, upkeep.check(store))
        print(json.dumps(r, indent=2))
        return 0 if r["ok"] else 1
    if action == "repair":
        r = upkeep.repair(store, dry_run=dry_run)
        if not (dry_run and store.problem):  # (dry, a damaged index is not read: repair rebuilds it first)
            moved = _move_bad_records(store, dry_run)
            r["records_moved_aside"] = [*r.get("records_moved_aside", []), *moved]
        if not dry_run:
            r["after"] = _with_records(store, upkeep.check(store))
        print(json.dumps(r, indent=2))
        return 0 if dry_run or r["after"]["ok"] else 1
    r = upkeep.clear(store, dry_run=dry_run)
    print(_clear_summary(r))
    return 0


def _with_records(store: Store, report: dict[str, Any]) -> dict[str, Any]:
    """`check`'s report with every job, note and sweep record that fails its type check named."""
    from dataclasses import asdict

    from twophase_core.storage.record_types import record_problems

    if report["index"]["problem"]:
        return report  # the index cannot be read as it is: repair rebuilds it first
    bad = [p for p in record_problems(store) if p.field]  # damaged ones are in the index report already
    report["records"] = [asdict(p) for p in bad]
    if bad:
        named = "; ".join(f"{p.key} (field {p.field}: {p.why})" for p in bad[:5])
        report["problems"].append(f"records: {len(bad)} fail their type check: {named} (repair moves them aside)")
        report["ok"] = False
    return report


def _move_bad_records(store: Store, dry_run: bool) -> list[dict[str, str]]:
    """Move aside (`upkeep.move_aside`) every record that fails its type check; dry, only name them."""
    from twophase_core.storage import upkeep
    from twophase_core.storage.record_types import record_problems

    out = []
    for p in record_problems(store):
        why = f"field {p.field}: {p.why}" if p.field else p.why
        out.append({"key": p.key, "why": why, "to": "" if dry_run else upkeep.move_aside(store, p.key, why)})
    return out


def _clear_summary(r: dict[str, Any]) -> str:
    """What `cache clear` removed (or, dry, would remove) and what it left alone, for a person."""
    plural = {k: k if k.endswith("files") else f"{k}s" for k in r["removed"]}
    what = ", ".join(f"{v} {plural[k] if v != 1 else k}" for k, v in r["removed"].items() if v) or "nothing"
    lines = [f"{'would remove' if r['dry_run'] else 'cleared'} from {r['root']} and {r['storage']}: {what} "
             f"({r['bytes_removed']} bytes)"]
    lines += [f"  {p}" for p in r.get("would_remove", [])]
    if r["left_alone"]:
        lines.append(f"left alone ({len(r['left_alone'])}: not twophase's, or in use):")
        lines += [f"  {x}" for x in r["left_alone"][:20]]
        if len(r["left_alone"]) > 20:
            lines.append(f"  ... and {len(r['left_alone']) - 20} more (`twophase cache check` lists them)")
    return "\n".join(lines)


def _resolve_executor(args: argparse.Namespace) -> None:
    """--executor, else $TWOPHASE_EXECUTOR, else local. argparse checks `choices` against a flag given,
    never against a default, so the environment's value is checked here: one line naming the variable."""
    if hasattr(args, "executor"):  # a command that runs experiments
        args.executor = resolve_executor(args.executor)


def check_devices(configs: Iterable[conf.ExperimentConfig], executor: str) -> None:
    """Each distinct device of `configs` usable where `executor` runs them, and on Ray a usable address,
    before anything is written."""
    check_placement((cfg.train.device for cfg in configs), executor)


def _flag_hint(name: str) -> str:
    for cls in (registry.get(k).config for k in registry.names()):
        specs = conf.settings_of(cls)
        if name in specs:
            return f" (flag {specs[name][0].flag(name)})"
    return ""


def main(argv: list[str] | None = None) -> int:
    """The `twophase` command. A reader that stops early (`twophase settings | head -1`) ends it quietly
    with status PIPE_CLOSED, as the Python docs recommend: stdout is pointed at devnull so that the
    interpreter's own flush at exit cannot fail again, and no traceback is printed."""
    try:
        try:
            code = _main(argv)
        except SystemExit:  # argparse's --help and usage lines: flushed here too
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # here, not at exit: a closed pipe is found inside this try
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return PIPE_CLOSED
    return code


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="twophase", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("sweep", help="a grid of experiments: settings given as lists, seeds as replicates")
    sweep_sub = ps.add_subparsers(dest="sweep_kind", required=True)
    psub = sub.add_parser("submit", help="queue an experiment on the job runner, as the app's Run button does")
    submit_sub = psub.add_subparsers(dest="submit_kind", required=True)
    for kind in registry.names():  # every registered experiment, plugins included
        title = registry.get(kind).title
        _experiment_parser(sub, kind, registry.get(kind).help)
        _experiment_parser(sweep_sub, kind, f"sweep {title} runs", sweep=True)
        _experiment_parser(submit_sub, kind, f"submit a {title} job")
        submit_sub.choices[kind].add_argument("--wait", action="store_true",
                                              help="show progress until the job ends; exit 1 if it fails")
    pj = sub.add_parser("jobs", help="list the jobs of the store as a table")
    pj.add_argument("--cache-dir")
    sub.add_parser("presets", help="list the presets")
    sub.add_parser("models", help="list every model: built-in and registered (entry points twophase.models)")
    sub.add_parser("datasets", help="list every dataset: built-in and registered (entry points twophase.datasets)")
    sub.add_parser("settings", help="print the table of every setting (as in docs/settings.md)")
    pc = sub.add_parser("cache", help="inspect, check, repair or clear the result store")
    pc.add_argument("action", choices=["info", "check", "repair", "clear"],
                    help="info: sizes; check: report problems, change nothing; repair: rebuild the index, move "
                         "damaged records aside and drop checkpoints of ours that fail their checksum; clear: remove "
                         "everything twophase wrote and nothing else (works on a damaged or full store)")
    pc.add_argument("--cache-dir")
    pc.add_argument("--dry-run", action="store_true", help="repair, clear: list what would change, change nothing")
    pb = sub.add_parser("bench", help="measure speed against baselines in the same run")
    pb.add_argument("--json", metavar="OUT")
    pb.add_argument("--quick", action="store_true", help="fewer repeats")
    pg = sub.add_parser("gallery", help="the results that ship with the package: list, verify or build them")
    pg.add_argument("action", choices=["list", "verify", "build"],
                    help="list: what it holds; verify: compute every entry again and compare (bit for bit on the "
                         "platform it was built on); build: compute and write them (for a release)")
    pg.add_argument("--only", action="append", default=None, metavar="NAME",
                    help="an entry's name (repeatable): demo-chaos, demo-cone, demo-linear, demo-sweep-chaos, "
                         "demo-sweep-cone")
    pl = sub.add_parser("lesson", help="the lesson's handout: the seven steps and their figures as one HTML file")
    pl.add_argument("--html", metavar="OUT", required=True, help="the file to write (it opens offline)")
    args = parser.parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    _current_folder_importable()

    try:
        _resolve_executor(args)
        if args.cmd in ("models", "datasets"):
            return _catalogue(args.cmd[:-1])
        if args.cmd == "presets":
            for name, (desc, _) in PRESETS.items():
                print(f"{name:18s} {desc}")
            return 0
        if args.cmd == "settings":
            print(settings_table(), end="")
            return 0
        if args.cmd == "cache":
            return _cache(args.action, args.cache_dir, args.dry_run)
        from twophase_core.science.train import configure_threads

        configure_threads()
        if args.cmd == "lesson":
            return _lesson(args.html)
        if args.cmd == "gallery":
            return _gallery(args.action, args.only)
        if args.cmd == "bench":
            from twophase_core.bench.suite import main as bench_main

            return bench_main(args.json, quick=args.quick)
        if args.cmd == "sweep":
            return _sweep(args)
        if args.cmd == "submit":
            return _submit(args)
        if args.cmd == "jobs":
            return _jobs(args.cache_dir)
        cfg = build_config(args.cmd, args)
        check_devices([cfg], args.executor)
        if args.print_config:
            print(json.dumps(conf.to_dict(cfg), indent=2))
            return 0
        check_output_path(args.json)
        store = open_store(args.cache_dir)
        from twophase_core.execution.run import run_experiment

        result = run_experiment(cfg, store, progress=_Bar(args.quiet), executor=args.executor)
        _write_json(args.json, result.to_json())
        print(summary(result), file=sys.stderr if args.json == "-" else sys.stdout)  # stdout: the JSON alone
        return 0
    except ConfigError as e:
        print(f"twophase: error: {e}{_flag_hint(e.field)}", file=sys.stderr)
        return 2
    except Exception as e:  # TrainingDiverged, Cancelled, a full or damaged store: one line, not a traceback
        from twophase_core.science.train import Cancelled, TrainingDiverged
        from twophase_core.storage.errors import StoreError

        if isinstance(e, TrainingDiverged | Cancelled | StoreError):
            print(f"twophase: error: {e}", file=sys.stderr)
            return 1
        raise


def _current_folder_importable() -> None:
    """An import path (--model mymodels:net) finds a module in the current folder, as `python -m twophase_core`
    would: the `twophase` script's own folder is first on sys.path, not this one (appended: installed packages
    come first). A job's worker starts in this folder too (python -m puts it first there)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def _catalogue(what: str) -> int:
    """`twophase models|datasets`: one line each, built-ins first, then every entry point (one that cannot be
    used says why); then how to give one's own by import path."""
    from twophase_core.settings import plugins

    rows = plugins.catalogue(what)
    width = max(len(n) for n, _, _ in rows)
    for name, origin, text in rows:
        print(f"{name:{width}s}  {text}" + ("" if origin == "built-in" else f"  [{origin}]"))
    print(f"\nyour own: --{what} MODULE:CALLABLE, a {plugins.CALLS[what]} (CLI and notebook; the app offers the "
          f"names above), or register it under the entry-point group {plugins.GROUPS[what]}")
    return 0


def _lesson(out: str) -> int:
    """`twophase lesson --html OUT`: the whole lesson, figures included, in one file that opens offline."""
    from twophase_core.interfaces.lesson import handout_html

    check_output_path(out)
    Path(out).write_text(handout_html())
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _gallery(action: str, only: list[str] | None) -> int:
    """`twophase gallery list|verify|build`: verify exits 1 if an entry is not reproduced."""
    from twophase_core.interfaces import gallery

    say = lambda line: print(line, flush=True)  # noqa: E731
    if action == "list":
        g = gallery.read()
        for e in g.entries:
            print(f"{e.name:18s} {e.run_id}  {e.bytes:>9,} bytes  built {e.built} (twophase {e.version}, torch "
                  f"{e.platform.get('torch')})")
        print(f"{len(g.entries)} results, {gallery.size():,} bytes in {gallery.FOLDER}")
        return 0
    if action == "build":
        g = gallery.build(only, say=say)
        print(f"gallery: {len(g.entries)} results, {gallery.size():,} bytes")
        return 0
    verdicts = gallery.verify(only, say=say)
    if not verdicts:
        raise ConfigError("--only", ",".join(only or []), "names no entry of the gallery (twophase gallery list)")
    return 0 if all(v.same for v in verdicts) else 1


def _submit(args: argparse.Namespace) -> int:
    """`twophase submit KIND ...`: a job exactly as the app makes one (it shows on the Runs page); prints
    its id; with --wait, a progress bar until it ends (exit 1 unless it is done)."""
    from twophase_core.execution.jobs import JobManager, env_max_jobs

    cfg = build_config(args.submit_kind, args)
    check_devices([cfg], args.executor)
    if args.print_config:
        print(json.dumps(conf.to_dict(cfg), indent=2))
        return 0
    max_running = env_max_jobs()  # a bad $TWOPHASE_MAX_JOBS is named before open_store makes the store
    jm = JobManager(open_store(args.cache_dir), max_running=max_running)
    rec = jm.submit(cfg, executor=args.executor)
    print(rec.id)
    if not args.wait:
        print(f"{rec.status}: follow it with `twophase jobs` or in the app (?run={rec.id})", file=sys.stderr)
        return 0
    bar = _Bar(args.quiet)
    while True:
        jm.pump()
        latest = jm.get(rec.id)
        if latest is None:
            raise ConfigError("job", args.submit_kind, "its record vanished from the store")
        rec = latest
        if rec.finished:
            break
        bar(max(rec.progress, 0.0), rec.stage or rec.status)
        time.sleep(0.5)
    if rec.status == "done":
        bar(1.0, "done")
        return 0
    print(f"twophase: job {rec.id} {rec.status}" + (f": {rec.error}" if rec.error else ""), file=sys.stderr)
    return 1


def _jobs(cache_dir: str | None) -> int:
    """`twophase jobs`: one line per job, newest first; a record failing its checks is named on stderr and
    left in place (exit 0: the good jobs were listed)."""
    import pandas as pd

    from twophase_core.execution.jobs import JobManager
    from twophase_core.storage.record_types import REPAIR_HINT

    jm = JobManager(open_store(cache_dir))
    recs = jm.list()
    for bad in jm.skipped:
        print(f"twophase: skipped {bad} ({REPAIR_HINT})", file=sys.stderr)
    if not recs:
        print("no jobs")
        return 0
    rows = [{"id": r.id, "status": r.status, "progress": f"{100 * r.progress:.0f}%", "stage": (r.stage or "")[:40],
             "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)),
             "error": (r.error or "")[:60]} for r in recs]
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """`twophase sweep KIND ...`: everything is expanded and validated before the first point runs."""
    from twophase_core.execution.local_pool import WORKERS_SPEC, env_workers
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.sweep import DEFAULT_SEEDS, MAX_POINTS, Sweep, expand, parse_vary
    from twophase_core.settings.spec import Spec, check, parse_text, split_list

    kind = args.sweep_kind
    base = build_config(kind, args)
    seeds = tuple(x.replace("-", "_") for s in args.seeds for x in split_list(s)) or DEFAULT_SEEDS
    rep_spec = Spec("int", "replicates", lo=1, hi=MAX_POINTS)
    replicates = parse_text("--replicates", rep_spec, args.replicates or str(sweep_replicates(args.preset)))
    check("--replicates", rep_spec, replicates)
    sweep = Sweep(base, parse_vary(kind, args.vary), seeds, replicates)
    points = expand(sweep)
    check_devices([p.config for p in points], args.executor)
    if args.print_config:
        print(json.dumps({**sweep.to_dict(), "points": len(points)}, indent=2))
        return 0
    workers = None  # one per core ($TWOPHASE_SWEEP_WORKERS), unless the sweep is a few seconds of work
    if args.workers is not None:
        workers = parse_text("--workers", WORKERS_SPEC, args.workers)
        check("--workers", WORKERS_SPEC, workers)
    else:
        env_workers()  # a bad $TWOPHASE_SWEEP_WORKERS is named before anything runs
    check_output_path(args.json)
    store = open_store(args.cache_dir)
    if getattr(args, "refine", None) is not None:  # issue 17: an adaptive t0 grid (execution/refine.py)
        from twophase_core.execution.refine import refine_sweep

        ref = refine_sweep(sweep, store, args.refine,
                           run=lambda s: run_sweep(s, store, progress=_Bar(args.quiet), executor=args.executor,
                                                   workers=workers))
        res, extra = ref.result, {"refine": ref.to_json()}
        print(f"refined in {len(ref.rounds)} rounds, {ref.spent:.0f} of {args.refine:.0f} units spent "
              f"({ref.stopped}); t0 = {ref.rounds[-1]['t0']}, T = {ref.rounds[-1]['T']}",
              file=sys.stderr if args.json == "-" else sys.stdout)
    else:
        res, extra = run_sweep(sweep, store, progress=_Bar(args.quiet), executor=args.executor, workers=workers), {}
    payload = {**res.to_json(), **extra}
    _write_json(args.json, payload)
    print(sweep_summary(payload), file=sys.stderr if args.json == "-" else sys.stdout)  # stdout: the JSON alone
    return 0


def sweep_summary(payload: dict[str, Any]) -> str:
    """One line per group: its varied settings, replicates, and t* with its interval per metric."""
    from twophase_core.science.transition import outcome_label

    lines = [f"sweep {payload['kind']}: {len(payload['runs'])} runs in {payload['meta'].get('seconds')}s, "
             f"{len(payload['groups'])} groups"]
    for g in payload["groups"]:
        name = ", ".join(f"{k}={v}" for k, v in g["varied"].items()) or "(base)"
        tr = g.get("transition") or {}
        parts = []
        for m, est in tr.items():
            if m in ("not_found", "outcome"):
                continue
            parts.append(f"{m}: t*={est['t_star']:.0f} [{est['ci_low']:.0f}, {est['ci_high']:.0f}]" if est
                         else f"{m}: {outcome_label((g.get('estimates') or {}).get(m))} "
                              f"({tr['not_found'].get(m, '')})")
        lines.append(f"  {name}  R={g['replicates']}  " + "; ".join(parts))
    return "\n".join(lines)


def summary(r: Result) -> str:
    """A few lines a person reads after a run (each kind writes its own)."""
    return registry.get(r.kind).summary(r)


if __name__ == "__main__":
    sys.exit(main())
