"""The `tools/patch.py` command: list | check | apply | revert --target PATH."""

from __future__ import annotations

import argparse
import sys
import textwrap

from cosmos_hal.patching import edits as E
from cosmos_hal.patching import engine
from cosmos_hal.patching.spec import SpecError, load_fixes, load_versions
from cosmos_hal.patching.target import TargetError, identify, open_target

EPILOG = """\
examples:
  python tools/patch.py list
  python tools/patch.py check  --target ~/cosmos-predict2            # a git checkout
  python tools/patch.py apply  --target $(python -c 'import site; print(site.getsitepackages()[0])')
  python tools/patch.py apply  --target PATH --fix ema-deterministic-init
  python tools/patch.py revert --target PATH                       # byte-identical originals back

exit status: 0 ok; 1 conflict or refused (nothing changed); 2 bad arguments or target.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="patch.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Apply cosmos-hal's fixes (patches/*.toml) to NVIDIA cosmos-predict2: a git checkout or "
                    "an installed package. All fixes of a run apply or none; originals are kept for revert.")
    p.add_argument("command", choices=["list", "check", "apply", "revert"],
                   help="list: the fixes; check: per fix applicable/applied/conflict; apply; revert")
    p.add_argument("--target", help="cosmos-predict2 checkout, site-packages folder, or the cosmos_predict2 "
                                    "package folder (needed for check/apply/revert)")
    p.add_argument("--fix", action="append", metavar="ID",
                   help="only this fix (repeatable); default: every fix. For revert: revert only these")
    p.add_argument("--force", action="store_true",
                   help="patch an upstream version the fixes were not written for; revert files changed "
                        "since they were patched")
    p.add_argument("--patches", metavar="DIR", help="folder of fix files (default: the repository's patches/)")
    return p


def _select(fixes, wanted):
    if not wanted:
        return fixes
    by_id = {f.id: f for f in fixes}
    unknown = [w for w in wanted if w not in by_id]
    if unknown:
        raise SpecError(f"--fix {', '.join(unknown)}: no such fix; known: {', '.join(by_id)}")
    return [by_id[w] for w in wanted]


def _print_list(fixes) -> None:
    for f in fixes:
        print(f"{f.id}  [{', '.join(f.targets)}]\n  {f.title}")
        for line in textwrap.wrap(" ".join(f.why.split()), 92):
            print(f"    {line}")
        print(f"    files: {', '.join(f.files)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fixes = load_fixes(args.patches)
        chosen = _select(fixes, args.fix)
        if args.command == "list":
            _print_list(chosen)
            return 0
        if not args.target:
            print(f"patch.py {args.command}: --target PATH is required", file=sys.stderr)
            return 2
        target = open_target(args.target)
        version, how = identify(target, load_versions(args.patches))
        print(f"target: {target.describe()}")
        # revert needs no version: it puts back the bytes state.json recorded, whatever the release
        if version is None and not args.force and args.command != "revert":
            print(f"refused: {how}. Pass --force to try anyway (check reports what fits).", file=sys.stderr)
            return 1
        print(f"upstream: {how}" if version else
              f"upstream: {how} -- continuing because of {'--force' if args.force else 'revert'}")
        if version is not None:
            chosen = [f for f in chosen if version.name in f.targets or args.force]
        identity = version.name if version else f"unknown ({how})"
        if args.command == "check":
            reports = engine.check(target, chosen)
            for r in reports:
                print(r.line())
            return 1 if any(r.status == E.CONFLICT for r in reports) else 0
        if args.command == "apply":
            reports = engine.apply(target, chosen, identity)
            for r in reports:
                word = {"applicable": "applied now", "applied": "already applied"}[r.status]
                print(f"{r.fix.id}: {word}")
            return 0
        state = engine.load_state(target)
        if not state["files"]:
            print("nothing to revert: no fix is applied by cosmos-hal here")
            return 0
        drop = set(args.fix or state["fixes"])
        keep = [f for f in fixes if f.id in state["fixes"] and f.id not in drop]
        changed = engine.revert(target, keep, force=args.force)
        print(f"reverted: {', '.join(sorted(drop & set(state['fixes']))) or '(none)'}; "
              f"{len(changed)} file(s) restored")
        for rel in changed:
            print(f"  {rel}")
        return 0
    except engine.PatchError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        for r in exc.reports:
            print(r.line(), file=sys.stderr)
        return 1
    except (SpecError, TargetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
