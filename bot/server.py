"""How `cairn serve` runs the Bolt app: gunicorn over HTTP, or Slack's Socket Mode.

The app is built inside the serving process (gunicorn's worker, after the fork), never in a
parent that forks afterwards: the in-process job thread and the store's connections do not
survive a fork. One gunicorn worker with threads: without Redis the in-process job queue must
be one per deployment, and listeners only ever wait on the store and Redis.
"""

from __future__ import annotations

import logging
import os

from bot import messages
from bot.app import Clicks, create_app
from bot.slack import check_can_post, web_client
from jobs.config import Config
from jobs.core.errors import CairnError

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"


def build(config: Config):
    """Runtime, queue, client and app, checked: the bot can post in the alert channel."""
    from jobs.loop.queue import RQJobs, for_runtime
    from jobs.runtime import Runtime

    client = web_client(config)
    if client is None:
        raise CairnError(messages.NO_SLACK)
    check_can_post(client, config)
    rt = Runtime(config)
    rt.contracts  # parse the dbt project now, so no listener ever runs dbt  # noqa: B018
    jobs = for_runtime(rt, background=True)
    clicks = Clicks(jobs.redis if isinstance(jobs, RQJobs) else None)
    return create_app(rt, jobs, client, signing_secret=config.env.slack_signing_secret or "", clicks=clicks)


def wsgi_app(config: Config):
    """The WSGI callable gunicorn serves: Bolt's request handler on /slack/events."""
    from slack_bolt.adapter.wsgi import SlackRequestHandler

    if not config.env.slack_signing_secret:
        raise CairnError(messages.NO_SLACK)
    return SlackRequestHandler(build(config), path=EVENTS_PATH)


def serve_http(config: Config, host: str, port: int | None, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    bind = f"{host}:{port or int(os.environ.get('PORT', 3000))}"

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in {"bind": bind, "workers": 1, "worker_class": "gthread", "threads": threads,
                               "timeout": 30, "accesslog": "-", "preload_app": False}.items():
                self.cfg.set(key, value)

        def load(self):
            return wsgi_app(config)

    log.warning("serving the Slack app on http://%s%s", bind, EVENTS_PATH)
    Server().run()


def serve_socket(config: Config) -> None:
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    if not config.env.slack_app_token:
        raise CairnError(messages.NO_APP_TOKEN)
    SocketModeHandler(build(config), config.env.slack_app_token).start()
