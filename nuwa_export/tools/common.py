"""What every console verb shares: the parser, argparse types, the budget flags, and the guard
that turns user errors into one line.

Each verb is one module of ``nuwa_export/tools/`` (parse the arguments, call the library, print);
nothing imports them. User errors (:class:`NuwaError`) print one line ``<prog>: error: ...`` and
exit 1; internal bugs keep their traceback. Heavy imports (torch, transformers) happen after
parsing, so ``--help`` is fast and works anywhere.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from nuwa_export import __version__
from nuwa_export.errors import NuwaError

#: ``--version``'s text.
VERSION = f"nuwa-export {__version__}"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 1, like every other user error."""

    def error(self, message: str):  # noqa: D102 - argparse API
        raise NuwaError(message)


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` are refused, not passed on)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def user_path(text: str) -> str:
    """argparse type for paths: ``~`` and ``~user`` expanded here, an unknown user refused."""
    import os.path

    if not text:
        raise argparse.ArgumentTypeError("empty path")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} contains a NUL byte")
    expanded = os.path.expanduser(text)
    if text.startswith("~") and expanded == text:  # pathlib would raise on it later
        raise argparse.ArgumentTypeError(f"cannot expand {text.split('/')[0]}: no such user (or no home directory)")
    return expanded


def os_error(e: OSError) -> str:
    """One line for an error the file system raised."""
    name = e.filename if isinstance(e.filename, str) else None
    name = name if name is None or len(name) <= 120 else name[:60] + "..." + name[-40:]
    why = e.strerror or type(e).__name__
    return f"{name}: {why}" if name else why


def seed_int(text: str) -> int:
    """argparse type: a seed in ``[0, 2**64)``, what torch's generator takes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**64 - 1, got {text}")
    return value


def guard(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run ``main``: a NuwaError is one line and exit 1; Ctrl-C at any moment is exit 130.

    The :class:`~nuwa_export.interrupt.Session` records every SIGINT, even one Python swallowed
    in a destructor, and undoes what the command wrote when it fails or was interrupted. Here
    (this function's own frame) SIGINT is only recorded, so it cannot escape as a traceback.
    ``argv is None`` is the console script: the process ends right after, so a later Ctrl-C is
    ignored rather than restored to Python's default.
    """
    from nuwa_export.interrupt import Session

    session = Session(guard.__code__, final=argv is None)
    error = None
    try:
        session.open()
        code = main(argv)
    except NuwaError as e:
        code, error = 1, f"{prog}: error: {' '.join(str(e).strip().splitlines())}"  # one line, always
    except OSError as e:  # the file system said no (a name too long, a full disk, ...): the user's to fix
        code, error = 1, f"{prog}: error: {os_error(e)}"
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        session.close(ok=False)
        raise
    if session.close(ok=code == 0) or code == 130:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if error:
        print(error, file=sys.stderr)
    return code


#: The budget and stage-one flags (argparse ``dest`` names); each defaults to None = not given.
BUDGET_FLAGS = ("keep", "keep_ratio", "stage_one_keep", "stage_two_keep", "stage_two_layer", "per_region", "distance", "percentile")
#: What an export fixes besides the budgets.
FIXED_AT_EXPORT = (*BUDGET_FLAGS, "image_size")


def budget_request(args: argparse.Namespace):
    """The budget flags as the request the model family resolves (``pruning.BudgetRequest``)."""
    from nuwa_export.pruning.budgets import BudgetRequest

    return BudgetRequest(
        args.keep, args.stage_one_keep, args.stage_two_keep, args.stage_two_layer, not args.no_prune, args.keep_ratio,
        args.per_region, args.distance, args.percentile,
    )


def refuse_budgets_for_export(args: argparse.Namespace) -> None:
    """An export fixes its budgets and image size: refuse them given for one, naming the flags."""
    given = given_budget_flags(args, FIXED_AT_EXPORT) + (["--no-prune"] if args.no_prune else [])
    if given:
        raise NuwaError(f"{' '.join(given)}: budgets are fixed when exporting; re-run nuwa-export to change them")


def given_budget_flags(args: argparse.Namespace, flags: tuple[str, ...] = BUDGET_FLAGS) -> list[str]:
    """The budget flags given on the command line, as typed (``--keep``, ...)."""
    return [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f, None) is not None]


def check_budget_flags(args: argparse.Namespace) -> None:
    """``--no-prune`` keeps every patch: a budget given with it would be silently ignored, so refuse it."""
    given = given_budget_flags(args)
    if args.no_prune and given:
        raise NuwaError(f"--no-prune keeps every patch; {' '.join(given)} would have no effect, drop {'it' if len(given) == 1 else 'them'}")


def add_budget_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pruning budgets (docs/algorithm.md §1, §6)")
    g.add_argument("--keep", type=int, help="average vision tokens per LLM layer (default: 64 of 576 for LLaVA, same fraction elsewhere)")
    g.add_argument(
        "--keep-ratio", type=finite_float, metavar="R",
        help="Qwen2.5-VL: the paper's schedule, 0.25, 0.5 (default) or 0.75 of the image tokens (LLaVA: keep = R·patches)",
    )
    g.add_argument("--stage-one-keep", type=int, metavar="K1", help="tokens kept after the vision tower (default 7·keep/4)")
    g.add_argument("--stage-two-keep", type=int, metavar="K2", help="tokens kept from the stage-two layer on (default keep/4)")
    g.add_argument("--stage-two-layer", type=int, metavar="L", help="first LLM layer that sees only K2 tokens (default N/2)")
    g.add_argument("--no-prune", action="store_true", help="keep every patch in every layer (the plain model)")
    g.add_argument("--per-region", type=int, metavar="N", help="stage-one slots per 2x2 region (default min(4, ceil(K1/regions)))")
    g.add_argument("--distance", type=finite_float, help="swarm distance (reach sqrt(distance) patches; default 280)")
    g.add_argument("--percentile", type=finite_float, help="pillar quantile of anchor scores (default 0.55; Qwen2.5-VL 0.1)")
    g.add_argument(
        "--image-size", type=int, metavar="PX",
        help="Qwen2.5-VL: the fixed image side the vision graph takes, a multiple of 28 (default 448: 16x16 tokens)",
    )
