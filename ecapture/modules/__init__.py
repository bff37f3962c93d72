"""The registry of capture modules: explicit and ordered. Adding a module is one line in
MODULES. A duplicate name or alias is an error at import time."""

from __future__ import annotations

from ecapture.errors import ConfigError
from ecapture.modules.base import Module
from ecapture.modules.bash import BashModule
from ecapture.modules.boringssl import BoringSSLModule
from ecapture.modules.gnutls import GnuTLSModule
from ecapture.modules.gotls import GoTLSModule
from ecapture.modules.mysqld import MysqldModule
from ecapture.modules.nss import NSSModule
from ecapture.modules.openssl import OpenSSLModule
from ecapture.modules.postgres import PostgresModule
from ecapture.modules.zsh import ZshModule

MODULES: tuple[type[Module], ...] = (
    OpenSSLModule,
    BashModule,
    BoringSSLModule,
    GnuTLSModule,
    NSSModule,
    GoTLSModule,
    ZshModule,
    MysqldModule,
    PostgresModule,
)


def _index(modules: tuple[type[Module], ...]) -> dict[str, type[Module]]:
    index: dict[str, type[Module]] = {}
    for module in modules:
        for name in (module.name, *module.aliases):
            if name in index:
                raise RuntimeError(f"module name {name!r} registered twice")
            index[name] = module
    return index


_BY_NAME = _index(MODULES)


def get(name: str) -> type[Module]:
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(m.name for m in MODULES)
        raise ConfigError(f"unknown module {name!r}; known modules: {known}") from None
