"""`disse-synth`: the synthesis command group. Each subcommand lives in its own module."""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="disse")
def main() -> None:
    """Render spatial audio-text datasets: RIR banks, FOA mixtures, intensity features, captions, shards."""


# Subcommands register here, one line each (main.add_command(...)).
