"""vxgate's library: configuration, receiving, storage, the worker pipeline and relaying.

Salmon supplies start/stop and routing (`handlers/`); everything a content filter needs
that Salmon gets wrong for one (many recipients, durable acknowledgement, byte-identical
relay, threads per stage) lives here.
"""
