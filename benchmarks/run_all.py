"""Run the benchmark scripts and record their figures in benchmarks/README.md (``make bench``).

    python benchmarks/run_all.py                      # every bench_*.py, full runs (make bench)
    python benchmarks/run_all.py --quick              # short runs (make bench-quick)
    python benchmarks/run_all.py --quick --only rle crops
    python benchmarks/run_all.py --no-write --only rle   # run and print the records, write nothing

Each ``bench_*.py`` runs in turn, its output shown live and captured. The README's section between
``<!-- make-bench:begin -->`` and ``<!-- make-bench:end -->`` (added at the end of the file when
absent) is then rewritten: per benchmark the command, date (UTC), machine, wall time, exit code,
the tables it printed and, for the families in ``_record.BENCHES``, a plot of its table in
``benchmarks/plots/<name>.png``. Everything outside the markers is left as it is. With ``--only``
the other benchmarks' records stay. A script that fails is recorded as failed (with its stderr's
tail) and the others still run; the exit status is then 1.

``--quick`` gives each script its short arguments (``--quick`` itself, or the set named in
``_record.BENCHES`` for scripts without that flag). Any other argument is passed to every script.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
from pathlib import Path

import _record
from cellcls.errors import ParameterError

HERE = Path(__file__).resolve().parent
log = logging.getLogger("run_all")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Unknown arguments are passed to every script.")
    parser.add_argument("--quick", action="store_true", help="short runs (each script's quick arguments)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (bench_rle, rle or bench_rle.py)")
    parser.add_argument("--no-write", action="store_true", help="print the records; write no README, no plots")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md", help="README to rewrite")
    parser.add_argument("--plots", type=Path, default=HERE / "plots", help="folder of the plots")
    parser.add_argument("--scripts", type=Path, default=HERE, help="folder of the bench_*.py scripts")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per script before it is stopped")
    parser.add_argument("--quiet", action="store_true", help="do not echo the scripts' output")
    return parser.parse_known_args(argv)


def select(scripts: list[Path], only: list[str] | None) -> list[Path]:
    """The scripts named in ``only`` (stem, stem without ``bench_``, or file name); all when None."""
    if not only:
        return scripts
    by_name = {s.stem: s for s in scripts}
    chosen = []
    for name in only:
        stem = Path(name).stem
        stem = stem if stem in by_name else f"bench_{stem}"
        if stem not in by_name:
            raise SystemExit(f"run_all: no benchmark {name!r}; choose from: {', '.join(sorted(by_name))}")
        if by_name[stem] not in chosen:
            chosen.append(by_name[stem])
    return chosen


def plot_for(result: _record.Result, plots: Path, readme: Path, *, write: bool) -> tuple[str | None, str | None]:
    """(plot path relative to the README, or None; why there is none, or None) for ``result``."""
    spec = _record.spec_for(result.name).plot
    if spec is None:
        return None, None
    path = plots / f"{result.name}.png"
    if not write:
        return None, "not drawn (--no-write)"
    try:
        _record.write_plot(path, spec, result.stdout)
    except ParameterError as err:
        log.warning("%s: no plot: %s", result.name, err)
        return None, str(err)
    try:
        return str(path.resolve().relative_to(readme.resolve().parent)), None
    except ValueError:
        return str(path.resolve()), None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, passthrough = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    scripts = select(sorted(args.scripts.glob("bench_*.py")), args.only)
    machine = _record.machine_info()
    when = datetime.datetime.now(datetime.timezone.utc)
    records: dict[str, str] = {}
    failed = []
    for script in scripts:
        script_args = [*(_record.spec_for(script.stem).quick_args if args.quick else ()), *passthrough]
        print(f"\n=== {script.name} {shlex.join(script_args)}".rstrip(), flush=True)
        result = _record.run_script(script, script_args, timeout=args.timeout, echo=not args.quiet, machine=machine)
        print(f"--- {script.name}: exit {result.code}{' (timed out)' if result.timed_out else ''}, "
              f"{result.seconds:.1f} s", flush=True)
        if not result.ok:
            failed.append(script.name)
        plot, note = plot_for(result, args.plots, args.readme, write=not args.no_write)
        records[result.name] = _record.render_record(result, plot=plot, plot_note=note)
    command = shlex.join(["python", "benchmarks/run_all.py", *argv])
    if args.no_write:
        print("\n" + "\n".join(records[name] for name in sorted(records)))
    else:
        _record.rewrite_readme(args.readme, records, keep_others=bool(args.only), command=command, when=when)
        print(f"\nrecorded {len(records)} benchmark(s) in {args.readme}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
