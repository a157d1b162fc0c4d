"""The `iqa` Typer application: wiring only. Commands live in their own modules."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from ..errors import IQAError
from .common import TYPER_SETTINGS, HelpGroup


def _usage_error(exc, fallback: str = "iqa") -> typer.Exit:
    """A usage error (unknown option, bad option value, missing argument) as one red line, exit 2;
    a group called with no arguments prints its help on stdout (exit 2), as it always has."""
    from rich.text import Text

    from .common import err_console

    if isinstance(exc, NoArgsIsHelpError):
        typer.echo(exc.format_message())
        return typer.Exit(exc.exit_code)
    processes = _processes()
    if processes is not None and processes.launcher_rank() != 0:  # every process has the same arguments
        return typer.Exit(exc.exit_code)
    where = exc.ctx.command_path if exc.ctx is not None else fallback
    message = exc.format_message().rstrip(".")
    err_console.print(Text("error: ", style="bold red") + Text(f"{message} (see '{where} --help')"))
    return typer.Exit(exc.exit_code)


def _processes():
    """The engine, when a launcher (torchrun) started this process as one of several; else None,
    without importing torch (``iqa --help`` stays fast)."""
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return None
    from .. import engine

    return engine if engine.launched() else None


# Commands that share their work among torchrun's processes; under torchrun any other command runs
# in the main process alone while the others exit (add a command here once it shards its work).
SHARED_COMMANDS = {"score-mesh-db", "score-pair", "train", "eval-db", "score-image"}


@contextlib.contextmanager
def _one_voice(processes, command: str | None):
    """Under torchrun: join the process group first, so that any failure can be reported once, and
    let only the main process print results, warnings and progress. Yields whether this process
    runs the command."""
    if processes is None:
        yield True
        return
    from .common import err_console

    processes.ensure_process_group()
    if command not in SHARED_COMMANDS:
        if processes.is_main_process():
            with processes.single_process():
                yield True
        else:
            yield False
        return
    if processes.is_main_process():
        yield True
        return
    stdout, quiet = sys.stdout, err_console.quiet
    with open(os.devnull, "w") as devnull, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank 0 shows them once
        sys.stdout, err_console.quiet = devnull, True
        try:
            yield True
        finally:
            sys.stdout, err_console.quiet = stdout, quiet


def _report(message: str, processes) -> None:
    """The one error line; under torchrun only from the first process that failed."""
    from rich.console import Console
    from rich.text import Text

    from .common import err_console

    if processes is not None and not processes.first_failure():
        return
    console = Console(stderr=True, highlight=False, soft_wrap=True) if err_console.quiet else err_console
    console.print(Text("error: ", style="bold red") + Text(message))


class IQAGroup(HelpGroup):
    """Turns every IQAError (and OS-level failures) into one red line on stderr and exit 1, and every
    usage error into one red line and exit 2."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as exc:  # iqa --bogus
            raise _usage_error(exc) from None

    def invoke(self, ctx):
        import warnings

        from rich.text import Text

        from .common import err_console

        processes = _processes()
        command = next(iter(getattr(ctx, "_protected_args", None) or []), None)  # the sub-command's name
        try:
            with _one_voice(processes, command) as runs_here, warnings.catch_warnings():
                warnings.showwarning = _warning_printer(warnings.showwarning)
                return super().invoke(ctx) if runs_here else None
        except UsageError as exc:  # a command's options and arguments, or an unknown command
            sub = ctx.invoked_subcommand
            raise _usage_error(exc, f"{ctx.command_path} {sub}" if sub else ctx.command_path) from None
        except IQAError as exc:
            _report(_one_line(exc), processes)
            raise typer.Exit(1) from None
        except OSError as exc:  # disk full, permission denied, ... never a traceback
            _report(_one_line(exc), processes)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if processes is None or processes.launcher_rank() == 0:
                err_console.print(Text("interrupted", style="bold red"))
            raise typer.Exit(130) from None
        except Exception as exc:
            if processes is None or not processes.is_process_group_failure(exc):
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            _report(f"process {processes.launcher_rank()} stopped: the other processes are gone or did not answer "
                    f"({first_line})", processes)
            raise typer.Exit(1) from None


def _one_line(exc: BaseException) -> str:
    """The message on one line: some libraries' messages (HDF5's) run over several."""
    return " ".join(str(exc).split())


def _warning_printer(python_showwarning):
    """A warnings.showwarning that prints iqa's own warnings as one yellow 'warning:' line and
    hands anything else to ``python_showwarning``."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        from ..errors import IQAWarning

        if not issubclass(category, IQAWarning):
            python_showwarning(message, category, filename, lineno, file, line)
            return
        from rich.text import Text

        from .common import err_console

        err_console.print(Text("warning: ", style="bold yellow") + Text(_one_line(message)))

    return show


app = typer.Typer(
    name="iqa",
    help="Perceptual image quality: LPIPS and Graphics-LPIPS distances, mesh-quality databases, "
         "BAPPS benchmark protocols and training.\n\n"
         "\b\nExamples:\n"
         "  iqa score-pair ref.png dist.png --net alex\n"
         "  iqa patchify renders/ --db DB.csv --out store.h5\n"
         "  iqa score-mesh-db store.h5 --checkpoint graphics_lpips.pth --out scores.csv\n"
         "  iqa train store.h5 --name demo --nepoch 5 --nepoch_decay 5\n"
         "  iqa eval-bapps 2afc dataset/ --model l2\n\n"
         "'iqa COMMAND --help' shows a command's options and more examples.",
    **{**TYPER_SETTINGS, "cls": IQAGroup},
)


def _version_callback(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"iqa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(show_version: bool = typer.Option(False, "--version", "-V", callback=_version_callback, is_eager=True,
                                            help="Print the iqa version and exit.")) -> None:
    """Perceptual image quality toolkit."""
    # 'iqa --version' is the root's option; 'iqa score-pair ... --version 0.0' is the LPIPS version, an
    # option of the command: click parses each level's options separately, so the two never meet.


# -- command registration: the modules import only typer at top level, so --help stays fast --------
from . import eval_bapps, eval_db, list_metrics, patchify, score_image, score_mesh_db, score_pair  # noqa: E402

app.command("list-metrics")(list_metrics.list_metrics)
app.command("eval-db")(eval_db.eval_db)
app.command("score-pair")(score_pair.score_pair)
app.command("score-image")(score_image.score_image)
app.command("patchify")(patchify.patchify)
app.command("score-mesh-db")(score_mesh_db.score_mesh_db)
app.add_typer(eval_bapps.app, name="eval-bapps")
app.command("eval-jnd", cls=eval_bapps.MultiValueCommand)(eval_bapps.eval_jnd)
from . import train  # noqa: E402
app.command("train", cls=train.TrainCommand)(train.train)
from . import distort  # noqa: E402
app.command("distort")(distort.distort)


def main() -> None:
    app(prog_name="iqa")


if __name__ == "__main__":
    sys.exit(main())
