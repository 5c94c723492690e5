"""`disse-synth`: the synthesis command group. Each subcommand lives in its own module."""
from __future__ import annotations

import click

from disse.schemas import SchemaError


class _Group(click.Group):
    """Bad input (:class:`SchemaError`) from any subcommand -> one line ``error: ...``, status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SchemaError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="disse")
def main() -> None:
    """Render spatial audio-text datasets: RIR banks, FOA mixtures, intensity features, captions, shards."""


# Subcommands register here, one line each (main.add_command(...)).
from disse.pipeline.rirs import rirs_command  # noqa: E402
main.add_command(rirs_command)
from disse.pipeline.render import render_command  # noqa: E402
main.add_command(render_command)
from disse.pipeline.captions import captions_command  # noqa: E402
main.add_command(captions_command)
from disse.pipeline.demo import demo_command  # noqa: E402
main.add_command(demo_command)
from disse.pipeline.inspect import inspect_command  # noqa: E402
main.add_command(inspect_command)
from disse.pipeline.upgrade import upgrade_command  # noqa: E402
main.add_command(upgrade_command)
from disse.pipeline.official_grid import official_grid_command, official_rirs_command  # noqa: E402
main.add_command(official_rirs_command)
main.add_command(official_grid_command)


if __name__ == "__main__":  # python -m disse.pipeline.cli
    main()
