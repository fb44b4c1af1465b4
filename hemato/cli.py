"""HematoVision Edge classifies stained white blood cells (basophil, eosinophil, lymphocyte, monocyte, neutrophil) in
microscope images, on a Raspberry Pi or any computer: each cell gets a class and a confidence, or UNCERTAIN
when the model is not sure, and a folder gets its differential count. Not a diagnostic device: a qualified
person must confirm every result."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# subcommand -> (module with add_arguments/main, extra that provides its dependencies, help); in the order a
# user meets them. Each module is imported only when its subcommand is used.
SUBCOMMANDS = {
    "run": ("edge_app.run.cli", "edge", "classify the cells in images, a folder, a video or a camera"),
    "serve": ("edge_app.web.app", "web", "a web page for the bench: upload images, see each cell"),
    "info": ("edge_app.info", "edge", "what a model is: classes, input, threshold, provenance"),
    "report": ("edge_app.report.cli", "edge", "a printable HTML report of a results CSV"),
    "adapt": ("edge_app.adapt.cli", "edge", "refit the model's head on your laboratory's reviewed cells"),
    "verify": ("evaluation.verify", "edge", "compare a reference model with one or more others on labelled images (parity gate)"),
    "bench": ("benchmarks.bench", "edge", "speed, size, memory and accuracy of models, here"),
    "train": ("training.cli", "train", "train a classifier on labelled cell images"),
    "convert": ("convert.cli", "train", "convert a trained model to TFLite (float32 ... int8)"),
}
EXAMPLES = """examples:
  hemato run ~/smears     every image of a folder: a line each, results.csv, the differential
  hemato run one.jpg      one image's answer
  hemato serve            the web page, on http://127.0.0.1:8000/
  hemato info             what the default model is

`hemato COMMAND --help` lists a command's options."""


# an ImportError from these is a bug, not a missing extra
OUR_PACKAGES = {"hemato", "edge_app", "network", "evaluation", "training", "convert", "benchmarks"}


def _missing_extra(command: str, extra: str, exc: ImportError) -> int:
    print(f"hemato {command}: missing dependency '{exc.name}'. Install it with:  "
          f"pip install \".[{extra}]\"", file=sys.stderr)
    return 2


def stdout_closed() -> int:
    """Standard output's reader is gone (`hemato ... | head`): send what is left of it nowhere (the interpreter's
    own flush at exit too) and return the status of a Unix tool so ended."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand, import its module lazily and run it."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hemato", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from hemato import __version__
    parser.add_argument("--version", action="version", version=f"hemato {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
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
    except BrokenPipeError:
        return stdout_closed()


if __name__ == "__main__":
    sys.exit(main())
