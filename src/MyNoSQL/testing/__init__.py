"""Tools for testing applications built on MyNoSQL (and MyNoSQL itself): a fault-injecting TCP proxy."""

from .faultproxy import FaultProxy, Mode, ProxyStats

__all__ = ["FaultProxy", "Mode", "ProxyStats"]
