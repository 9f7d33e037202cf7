"""``python -m kloros_tasks.cli.celery_worker -A APP worker ARGS...``: what
``celery -A APP worker ARGS...`` runs, without Celery's other subcommands.

``up`` starts its workers with this.  Importing the ``celery`` command imports every
subcommand and the plugins installed for it: Flower (a ``celery flower`` plugin) and,
for ``celery shell``, click_repl with prompt_toolkit, together 0.17 s of a worker's
start that it never uses, on the path from ``up``'s start to the first task
(docs/performance.md).  The group below does what the ``celery`` group does before
it runs a subcommand (the app found from ``-A``, its user and preload options added,
``CELERY_`` environment variables for options) with only ``worker`` under it.
``celery -A kloros_tasks.celery_app worker`` itself, as the units and operators run
it, is unchanged.
"""

from __future__ import annotations

import click
from celery.app.utils import find_app
from celery.bin.base import CLIContext, consume_preload_options
from celery.bin.worker import worker


@click.group()
@click.option("-A", "--app", required=True, type=click.UNPROCESSED)
@click.pass_context
def celery(ctx: click.Context, app) -> None:
    """``celery``, with its ``worker`` subcommand only."""
    if isinstance(app, str):
        try:
            app = find_app(app)
        except Exception as exc:  # noqa: BLE001 - reported as the celery command does
            ctx.fail(f"Unable to load celery application {app!r}: {exc}")
    ctx.obj = CLIContext(app=app, no_color=False, workdir=None, quiet=False)
    worker.params.extend(app.user_options.get("worker", []))
    preload = app.user_options.get("preload", ())
    if preload:
        worker.params.extend(preload)
        worker.callback = consume_preload_options(worker.callback)


celery.add_command(worker)


def main() -> int:
    return celery(auto_envvar_prefix="CELERY", prog_name="celery")


if __name__ == "__main__":
    main()
