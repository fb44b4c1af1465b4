"""The `hemato` console script: one subcommand per job, each imported only when used."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with add_arguments/main, extra that provides its dependencies, help)
SUBCOMMANDS = {
    "run": ("edge_app.run.cli", "edge", "classify cells in images, a folder, a video or a camera"),
    "train": ("training.cli", "train", "train a MobileNetV2 classifier on labelled cell images"),
    "convert": ("convert.cli", "train", "convert a trained model to TFLite (float32/float16/dynamic/int8)"),
    "verify": ("evaluation.verify", "edge", "compare two TFLite models on labelled images (parity gate)"),
    "bench": ("benchmarks.bench", "edge", "benchmark latency, size, memory and accuracy of models"),
    "serve": ("edge_app.web.app", "web", "serve the web viewer"),
}


# an ImportError from these is a bug, not a missing extra
OUR_PACKAGES = {"hemato", "edge_app", "network", "evaluation", "training", "convert", "benchmarks"}


def _missing_extra(command: str, extra: str, exc: ImportError) -> int:
    print(f"hemato {command}: missing dependency '{exc.name}'. Install it with:  "
          f"pip install \".[{extra}]\"", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand, import its module lazily and run it."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hemato", description=__doc__)
    from hemato import __version__
    parser.add_argument("--version", action="version", version=f"hemato {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    command = argv[0]
    module_name, extra, help_text = SUBCOMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in OUR_PACKAGES:
            raise
        return _missing_extra(command, extra, exc)
    command_parser = argparse.ArgumentParser(prog=f"hemato {command}", description=help_text)
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except ImportError as exc:
        return _missing_extra(command, extra, exc)


if __name__ == "__main__":
    sys.exit(main())
