"""Triton's system shared memory extension: clients on an ingress replica's node pass tensors through
POSIX shared memory (``/dev/shm``) instead of the request and response bodies.

A client creates a region (``shm_open``), registers it by name, key, offset and size, then names it in an
input's or output's ``shared_memory_region`` / ``_byte_size`` / ``_offset`` parameters: inputs are read
from the region, outputs written into it, and the body carries neither. Registrations are kept in Ray's
key-value store per application, so every ingress replica knows them (a request may reach any); each records
the node it was made on, and a request that reaches a replica on another node (whose ``/dev/shm`` is not the
client's) is refused with a clear error. Each replica maps a region once and checks per request that its
registration is still the one it mapped (one key-value read, off the event loop). CUDA shared memory is not
offered: its calls answer a clear error (unregister and status answer as for no regions, so clients that
clear both at start work).
"""

from __future__ import annotations

import asyncio
import errno
import json
import mmap
import os
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from ray.experimental import internal_kv

from deployments.private_files import not_own_file
from cluster.protocol.codec import SharedInput, SharedSlice
from cluster.protocol.raw_tensors import decode_raw, encode_raw
from deployments.errors import invalid, not_found

NAMESPACE = "ric"
SHM_FOLDER = "/dev/shm"
NO_CUDA = "CUDA shared memory is not supported by this server (no GPU shared memory); use system shared memory"


@dataclass(frozen=True)
class Region:
    """A registered region: ``byte_size`` bytes from ``offset`` of the shared memory object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    node: str  # the Ray node whose /dev/shm holds it
    token: str  # this registration (a re-registration under the same name gets a new one)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def check_key(key: Any) -> str:
    """A POSIX shared memory name: '/' and a file name in /dev/shm."""
    if not isinstance(key, str) or not key.startswith("/") or "/" in key[1:] or key in ("/", "/.", "/..") or "\0" in key:
        raise invalid(f"Unable to open shared memory region: '{key}': the key must be '/' and a name")
    return key


class SharedMemory:
    """One ingress replica's view of the application's system shared memory regions."""

    def __init__(self, app: str, node: str):
        self.prefix = f"shm:{app}:"
        self.node = node
        self._maps: dict[str, tuple[str, mmap.mmap]] = {}  # region name -> (token, mapping) of this replica

    # Ray's key-value store blocks on the GCS: every call below runs off the event loop.
    def _get(self, name: str) -> Region | None:
        raw = internal_kv._internal_kv_get(self.prefix + name, namespace=NAMESPACE)
        return Region(**json.loads(raw)) if raw else None

    def _all(self) -> list[Region]:
        keys = internal_kv._internal_kv_list(self.prefix, namespace=NAMESPACE)
        return sorted((r for r in (self._get(k.decode()[len(self.prefix):]) for k in keys) if r), key=lambda r: r.name)

    async def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        if not isinstance(name, str) or not name:
            raise invalid("a shared memory region needs a name")
        check_key(key)
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise invalid(f"failed to register shared memory region '{name}': '{field}' must be a "
                              "non-negative integer")
        region = Region(name, key, offset, byte_size, self.node, uuid.uuid4().hex)
        self._map(region)  # Triton maps at registration: a missing or short object fails here
        stored = await asyncio.to_thread(internal_kv._internal_kv_put, self.prefix + name,
                                         json.dumps(asdict(region)), False, namespace=NAMESPACE)
        if stored:  # the put does not overwrite: 1 means the name was taken
            self._forget(name)
            raise invalid(f"shared memory region '{name}' already in manager")

    async def unregister(self, name: str | None = None) -> None:
        """Unregister one region, or every region (Triton: unknown names are not an error)."""
        names = [name] if name else [r.name for r in await asyncio.to_thread(self._all)]
        for each in names:
            await asyncio.to_thread(internal_kv._internal_kv_del, self.prefix + each, namespace=NAMESPACE)
            self._forget(each)

    async def status(self, name: str | None = None) -> list[dict[str, Any]]:
        if name:
            region = await asyncio.to_thread(self._get, name)
            if region is None:
                raise not_found(f"Unable to find system shared memory region: '{name}'")
            return [region.status()]
        return [region.status() for region in await asyncio.to_thread(self._all)]

    async def read_inputs(self, shared: dict[str, SharedInput]) -> dict[str, np.ndarray]:
        """The inputs held in shared memory, copied out (the client may reuse its region at once)."""
        views = await self._views({name: s.where for name, s in shared.items()})
        inputs, bytes_elements = {}, 0
        for name, s in shared.items():
            array = decode_raw(name, s.datatype, s.shape, views.pop(name), bytes_elements)
            bytes_elements += array.size if array.dtype == object else 0
            inputs[name] = array.copy() if array.dtype != object else array
        return inputs

    async def write_outputs(self, outputs: dict[str, np.ndarray], shared: dict[str, SharedSlice]) -> None:
        """Write the outputs a request asked for in shared memory into their regions."""
        views = await self._views(shared)
        for name, where in shared.items():
            data = encode_raw(outputs[name])
            if len(data) > where.byte_size:
                raise invalid(f"shared memory size specified with the request for output '{name}' "
                              f"({where.byte_size} bytes) should be at least {len(data)} bytes to hold the results")
            views[name][:len(data)] = data

    async def _views(self, slices: dict[str, SharedSlice]) -> dict[str, memoryview]:
        """A memoryview of each slice, checked against its region's registration and bounds."""
        regions: dict[str, Region] = {}
        for where in slices.values():
            if where.region not in regions:
                regions[where.region] = await self._current(where.region)
        views = {}
        for tensor, where in slices.items():
            region = regions[where.region]
            if where.offset >= region.byte_size:
                raise invalid(f"Invalid offset for shared memory region: '{region.name}'")
            if where.offset + where.byte_size > region.byte_size:
                raise invalid(f"Invalid offset + byte size for shared memory region: '{region.name}'")
            start = region.offset + where.offset
            views[tensor] = memoryview(self._maps[region.name][1])[start:start + where.byte_size]
        return views

    async def _current(self, name: str) -> Region:
        """The region's registration, mapped in this replica (again, if it was re-registered)."""
        region = await asyncio.to_thread(self._get, name)
        if region is None:
            self._forget(name)
            raise not_found(f"Unable to find shared memory region: '{name}'")
        if region.node != self.node:
            raise invalid(f"shared memory region '{name}' was registered on node {region.node}, but this request "
                          f"reached an ingress replica on node {self.node}: system shared memory works only for "
                          "clients on the node of the replica that serves them")
        mapped = self._maps.get(name)
        if mapped is None or mapped[0] != region.token:
            self._map(region)
        return region

    def _map(self, region: Region) -> None:
        path = os.path.join(SHM_FOLDER, region.key[1:])
        try:  # never through a link, never blocking on a FIFO or a device
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as error:  # Triton's text, with why where it is one of ours
            why = {errno.ELOOP: ": a symbolic link", errno.EISDIR: ": not a regular file"}.get(error.errno, "")
            raise invalid(f"Unable to open shared memory region: '{region.key}'{why}") from None
        try:
            info = os.fstat(fd)
            refused = not_own_file(info)  # a client names a key in world-writable /dev/shm
            if refused:
                raise invalid(f"Unable to open shared memory region: '{region.key}': {refused}")
            size = info.st_size
            if size < region.offset + region.byte_size or not region.byte_size:
                raise invalid(f"failed to register shared memory region '{region.name}': the object '{region.key}' "
                              f"holds {size} bytes, not offset {region.offset} + byte_size {region.byte_size}")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._forget(region.name)
        self._maps[region.name] = (region.token, mapping)

    def _forget(self, name: str) -> None:
        """Drop this replica's mapping of a region (closed once no request still holds a view of it)."""
        mapped = self._maps.pop(name, None)
        if mapped is not None:
            try:
                mapped[1].close()
            except BufferError:
                pass  # a request in flight still reads or writes it: the mapping goes with its last view
