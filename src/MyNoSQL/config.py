"""The configuration a database remembers (``config.json`` in its folder), typed.

A :class:`DatabaseConfig` is a frozen value: a change makes a new one (``dataclasses.replace``), saved with a
crash-safe write before it takes effect, so a reader always sees one whole configuration, never half of a change.
Keys this version does not know are kept as they were (a newer version's settings survive an older one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import orjson

from .errors import CorruptionError
from .records.ids import new_id
from .storage.fileutil import atomic_write

CONFIG_FORMAT = 1
DEFAULT_PORT = 8800
Mode = Literal["Peer", "Mirror"]
MODES: dict[str, Mode] = {"peer": "Peer", "mirror": "Mirror"}


@dataclasses.dataclass(frozen=True)
class DatabaseConfig:
    """What a database remembers between runs.

    uuid: the database's own id, made once: replication ids and checkpoints are built from it, so they do not
          depend on the path the database was opened by.
    mode: ``"Peer"`` or ``"Mirror"``. peers: the mirrors it knows (URLs, credentials included).
    indexes: fields indexed by ``indexadd``. query_indexes: the indexes of ``createindex``, each
    ``{"ino", "name", "ddoc", "fields": [[field, "asc"|"desc"], ...], "partial_filter_selector"}``. subscriptions:
    the selectors of ``subscribe`` (a Peer keeps every record that matches one).
    host, port, advertise, certfile, keyfile: where it serves as a mirror.
    """

    uuid: str
    mode: Mode = "Peer"
    peers: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    query_indexes: tuple[Mapping[str, Any], ...] = ()
    subscriptions: tuple[Mapping[str, Any], ...] = ()
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    advertise: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    revs_limit: int | None = None  # CouchDB's _revs_limit, when one was set for this database
    purged_infos_limit: int | None = None  # CouchDB's _purged_infos_limit, when one was set (default 1000)
    security: Mapping[str, Any] | None = None  # CouchDB's _security object (admins, members)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # keys of other versions, kept

    def to_json(self) -> bytes:
        data = {**self.extra, "format": CONFIG_FORMAT}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                data[f.name] = list(value) if isinstance(value, tuple) else value
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> DatabaseConfig:
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
            values = {k: v for k, v in data.items() if k in known}
            extra = {k: v for k, v in data.items() if k not in known and k != "format"}
            for name in ("peers", "indexes"):
                if name in values:
                    if not isinstance(values[name], list) or not all(isinstance(x, str) for x in values[name]):
                        raise ValueError(f"{name} must be a list of strings")
                    values[name] = tuple(values[name])
            for name in ("query_indexes", "subscriptions"):
                if name in values:
                    if not isinstance(values[name], list) or not all(isinstance(x, dict) for x in values[name]):
                        raise ValueError(f"{name} must be a list of objects")
                    values[name] = tuple(values[name])
            if values.get("mode", "Peer") not in ("Peer", "Mirror"):
                raise ValueError(f"unknown mode {values.get('mode')!r}")
            port = values.get("port", DEFAULT_PORT)
            if type(port) is not int or not 0 <= port < 65536:
                raise ValueError(f"bad port {port!r}")
            for name in ("uuid", "host"):
                if name in values and not isinstance(values[name], str):
                    raise ValueError(f"{name} must be a string")
            for name in ("advertise", "certfile", "keyfile"):
                if values.get(name) is not None and not isinstance(values[name], str):
                    raise ValueError(f"{name} must be a string or null")
            if values.get("revs_limit") is not None and (type(values["revs_limit"]) is not int
                                                         or values["revs_limit"] < 1):
                raise ValueError("revs_limit must be a positive integer or null")
            if values.get("purged_infos_limit") is not None and (type(values["purged_infos_limit"]) is not int
                                                                 or values["purged_infos_limit"] < 1):
                raise ValueError("purged_infos_limit must be a positive integer or null")
            if values.get("security") is not None and not isinstance(values["security"], dict):
                raise ValueError("security must be an object or null")
            if "uuid" not in values:
                values["uuid"] = ""
            return cls(extra=extra, **values)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise CorruptionError(f"{where} is damaged: {exc}", path=where) from exc


def load_config(folder: Path) -> DatabaseConfig:
    """The configuration of the database in ``folder`` (a new one, saved, if it has none or no uuid yet)."""
    path = folder / "config.json"
    cfg = DatabaseConfig.from_json(path.read_bytes(), str(path)) if path.exists() else DatabaseConfig(uuid="")
    if not cfg.uuid:
        cfg = dataclasses.replace(cfg, uuid=new_id())
        save_config(folder, cfg)
    return cfg


def save_config(folder: Path, cfg: DatabaseConfig) -> None:
    atomic_write(folder / "config.json", cfg.to_json())
