"""vxgate's library: configuration, receiving, storage, the worker pipeline and relaying.

Salmon supplies start/stop and routing (`handlers/`); everything a content filter needs
that Salmon gets wrong for one (many recipients, durable acknowledgement, byte-identical
relay, threads per stage) lives here.
"""
import functools


@functools.cache
def installed_version():
    """vxgate's installed version ("" when run from a source tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("vxgate")
    except PackageNotFoundError:
        return ""
