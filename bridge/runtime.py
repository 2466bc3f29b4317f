"""What a running bridge holds: settings, database, mappings, routes, connectors, metrics.

Mappings and routes are read from ``settings.mappings_dir`` at start and on ``reload()``;
a review keeps a snapshot of the mapping it was rendered with, so reloading never changes
a review already open.
"""

from __future__ import annotations

import threading
from functools import cached_property

from connectors import Connector, Person, connector_for

from .config import Settings
from .db import Database
from .errors import MappingError, NotFoundError
from .mapping import Mapping, load_mappings
from .metrics import Metrics
from .routing import Router, load_routes


class Runtime:
    def __init__(self, settings: Settings, *, metrics: Metrics | None = None):
        self.settings = settings
        self.db = Database(settings.database_url)
        self.metrics = metrics or Metrics()
        self._local = threading.local()
        self._accounts: dict[str, Person] = {}
        self._asking = threading.Lock()
        self._connectors: list[Connector] = []  # every thread's, so close() releases their sockets
        self.wakeup = threading.Event()
        self.listening = threading.Event()  # this process's worker hears the database's NOTIFY (wakeups.Listener)
        self.mapping_numbers: dict[str, int] = {}  # the saved version of each file this instance has caught up to
        self.reload()

    def reload(self) -> None:
        directory = self.settings.mappings_dir
        if not directory.is_dir():  # without its routes the bridge would approve every review unasked
            raise MappingError(f"mappings_dir {str(directory.resolve())!r} is not a directory: set mappings_dir "
                               "in the config to the folder of mapping files and routes.yaml")
        mappings = load_mappings(directory)
        for mapping in mappings.values():
            if mapping.connection not in self.settings.connections:
                raise MappingError(
                    f"mapping {mapping.name!r} names connection {mapping.connection!r}, which is not configured",
                    details=[{"file": f"{mapping.name}.yaml", "field": "connection", "reason": "unknown connection"}],
                )
        router = Router(load_routes(self.settings.mappings_dir))
        router.check_mappings(mappings, set(self.settings.connections))
        self.mappings, self.router = mappings, router

    def mapping(self, name: str) -> Mapping:
        try:
            return self.mappings[name]
        except KeyError:
            raise NotFoundError(f"no mapping named {name!r}") from None

    def connector(self, connection: str) -> Connector:
        """One connector per connection per thread (client libraries' sessions are not
        safe to share between threads)."""
        cache = self._local.__dict__.setdefault("connectors", {})
        if connection not in cache:
            config = self.settings.connections.get(connection)
            if config is None:
                raise NotFoundError(f"no connection named {connection!r}")
            cache[connection] = connector_for(config)
            self._connectors.append(cache[connection])
        return cache[connection]

    def wake(self) -> None:
        """Tell this process's worker that jobs were just committed, unless the database
        tells it: a listening worker hears every new job's NOTIFY (PostgreSQL), and waking it
        twice cost an empty claim (three round trips) for about every job (bench/)."""
        if not self.listening.is_set():
            self.wakeup.set()

    def bridge_account(self, connection: str) -> Person:
        """Who the bridge is in a connection's system, asked once: worker threads that want
        it at once wait for the first to ask (a cold worker sent one call per thread)."""
        account = self._accounts.get(connection)
        if account is None:
            with self._asking:
                account = self._accounts.get(connection)
                if account is None:
                    account = self._accounts[connection] = self.connector(connection).check()
        return account

    def close(self) -> None:
        for connector in self._connectors:
            try:
                connector.close()
            except Exception:  # noqa: BLE001 - shutting down: release what can be released
                pass
        self.db.dispose()

    @cached_property
    def callback_secret(self) -> str:
        return self.settings.callback_secret.get_secret_value()
