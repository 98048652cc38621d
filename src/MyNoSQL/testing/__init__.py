"""Tools for testing applications built on MyNoSQL (and MyNoSQL itself): a fault-injecting TCP proxy and a
deadline-bounded wait for a condition."""

from .faultproxy import FaultProxy, Mode, ProxyStats
from .poll import poll_until

__all__ = ["FaultProxy", "Mode", "ProxyStats", "poll_until"]
