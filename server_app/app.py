"""fedhet ServerApp: parse the run config, look the method up, hand over to its strategy."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedhet.config import ConfigError
from fedhet.logs import setup_logging
from fedhet.methods import get_method, parse_run_config
from fedhet.server.messaging import fast_object_pulls
from fedhet.server.run_dir import RunDir

app = ServerApp()
log = logging.getLogger("fedhet")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the configured method; write the run folder and its report."""
    setup_logging()
    log.debug("ServerApp: %s", fast_object_pulls())
    try:
        cfg = parse_run_config(dict(context.run_config))
    except ConfigError as exc:
        log.error("%s", exc)
        raise
    run_dir = RunDir(cfg.shared.resolved_output_dir() / cfg.shared.run_name)
    log.info("run folder: %s", run_dir.path)
    strategy = get_method(cfg.shared.method).strategy_cls(cfg, run_dir)
    strategy.start(grid)
    try:
        from fedhet.report import write_report

        write_report(run_dir.path)
    except Exception as exc:  # a plotting problem must not fail a finished run
        log.warning("report not written: %s", exc)
