"""``disse-train``: train DELSA, or the release's model (``--config official``), from shards (CPU, one GPU, or many
GPUs / nodes under torchrun).

    disse-train --config configs/demo.yaml data.train=demo/train data.val=demo/val
    disse-train --config paper train.out_dir=runs/p1 --resume latest
    disse-train --config official model.official.roberta_dir=/data/roberta-base data.train=shards/train
    torchrun --nproc_per_node 8 -m disse.trainer.cli.train --config paper ...

Bad input (config, shards, checkpoint) prints one ``error: ...`` line and exits with status 2.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
import yaml

from disse.configs import config_path
from disse.schemas import SchemaError
from disse.schemas.config import config_to_dict
from disse.trainer.training.config import locate_error, read_train_config
from disse.trainer.training.loop import train


def resolve_config_path(name: str) -> Path:
    """A file path, or the name of a packaged preset (``demo``, ``paper.yaml``)."""
    p = Path(name)
    if p.is_file():
        return p
    for candidate in (name, f"{name}.yaml"):
        packaged = config_path(candidate)
        if "/" not in name and packaged.is_file():
            return packaged
    raise SchemaError("config file not found (give a path or a packaged preset: demo, paper, official)", file=name,
                      field="--config")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", default="demo", show_default=True,
              help="YAML config: a path or a packaged preset name (demo, paper, official).")
@click.option("--resume", default=None, help="'latest' (train.out_dir/checkpoints/latest.pt) or a checkpoint path.")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.argument("overrides", nargs=-1)
def cli(config: str, resume: str | None, print_config: bool, overrides: tuple[str, ...]) -> None:
    """Train DELSA (or the official model). OVERRIDES are ``section.field=value`` pairs, e.g. ``optim.lr=3e-4 data.batch_size=32``."""
    cfg, sources = read_train_config(resolve_config_path(config), list(overrides))
    if print_config:
        click.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), nl=False)
        return
    try:
        result = train(cfg, resume=resume)
    except SchemaError as exc:  # e.g. train.freeze, data.train: name the override or file that set it
        raise locate_error(exc, sources) from None
    if int(os.environ.get("RANK", "0")) == 0:
        best = result.best
        best_txt = f", best {best['metric']}={best['value']:.4f} at step {best['step']}" if best.get("value") is not None else ""
        click.echo(f"done: {result.step}/{result.total_steps} steps, loss {result.last_loss:.4f}{best_txt}; "
                   f"run folder {result.out_dir}")
        if result.bad_data.get("bad_shards") or result.bad_data.get("bad_samples"):
            click.echo(f"skipped bad data: {result.bad_data}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except SchemaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except FloatingPointError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
