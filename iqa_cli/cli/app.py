"""The `iqa` Typer application: wiring only. Commands live in their own modules."""

from __future__ import annotations

import sys

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
    where = exc.ctx.command_path if exc.ctx is not None else fallback
    message = exc.format_message().rstrip(".")
    err_console.print(Text("error: ", style="bold red") + Text(f"{message} (see '{where} --help')"))
    return typer.Exit(exc.exit_code)


class IQAGroup(HelpGroup):
    """Turns every IQAError (and OS-level failures) into one red line on stderr and exit 1, and every
    usage error into one red line and exit 2."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as exc:  # iqa --bogus
            raise _usage_error(exc) from None

    def invoke(self, ctx):
        from rich.text import Text

        from .common import err_console

        try:
            return super().invoke(ctx)
        except UsageError as exc:  # a command's options and arguments, or an unknown command
            sub = ctx.invoked_subcommand
            raise _usage_error(exc, f"{ctx.command_path} {sub}" if sub else ctx.command_path) from None
        except IQAError as exc:
            err_console.print(Text("error: ", style="bold red") + Text(str(exc)))
            raise typer.Exit(1) from None
        except OSError as exc:  # disk full, permission denied, ... never a traceback
            err_console.print(Text("error: ", style="bold red") + Text(str(exc)))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print(Text("interrupted", style="bold red"))
            raise typer.Exit(130) from None


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
def _root(show_version: bool = typer.Option(False, "--iqa-version", "-V", callback=_version_callback,
                                            is_eager=True, help="Print the iqa version and exit.")) -> None:
    """Perceptual image quality toolkit."""


# -- command registration: the modules import only typer at top level, so --help stays fast --------
from . import eval_bapps, list_metrics, patchify, score_mesh_db, score_pair  # noqa: E402

app.command("list-metrics")(list_metrics.list_metrics)
app.command("score-pair")(score_pair.score_pair)
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
