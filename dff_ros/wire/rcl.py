"""Publishing CDR bytes straight from a kept buffer: librcl's own serialized publish, called
through ctypes.

rclpy's ``publish(bytes)`` copies the bytes into a ``std::string`` before rcl sees them, and a
fresh ``bytes`` of every message costs a copy too. A data topic's messages are megabytes, so a
``SerializedPublisher`` writes each one (``cdr.serialize_into``) into a buffer it keeps and hands
rcl that buffer: the tensors are copied once on their way to DDS, which copies them into its own
history before the call returns (so the buffer is free again). Without librcl in the process it
falls back to rclpy's ``publish(bytes)``.
"""
from __future__ import annotations

import ctypes
import threading

from dff_ros.wire import cdr


class _Allocator(ctypes.Structure):   # rcutils_allocator_t (unused by a publish)
    _fields_ = [("allocate", ctypes.c_void_p), ("deallocate", ctypes.c_void_p), ("reallocate", ctypes.c_void_p),
                ("zero_allocate", ctypes.c_void_p), ("state", ctypes.c_void_p)]


class _SerializedMessage(ctypes.Structure):   # rcl_serialized_message_t = rcutils_uint8_array_t
    _fields_ = [("buffer", ctypes.c_void_p), ("buffer_length", ctypes.c_size_t),
                ("buffer_capacity", ctypes.c_size_t), ("allocator", _Allocator)]


def _publish_function():
    try:
        with open("/proc/self/maps") as maps:
            path = next(line.split()[-1] for line in maps if line.rstrip().endswith("/librcl.so"))
        f = ctypes.CDLL(path).rcl_publish_serialized_message
    except (OSError, StopIteration, AttributeError):
        return None
    f.argtypes = [ctypes.c_void_p, ctypes.POINTER(_SerializedMessage), ctypes.c_void_p]
    f.restype = ctypes.c_int32
    return f


_publish = None
_loaded = threading.Lock()


def _rcl_publish():
    global _publish
    with _loaded:
        if _publish is None:
            _publish = _publish_function() or False
    return _publish


class SerializedPublisher:
    """An rclpy publisher (``.publisher``) whose ``publish(msg)`` sends ``msg`` (a message or its
    ``cdr.Blank``) as CDR written once into a kept buffer. Safe to call from several threads."""

    def __init__(self, publisher):
        self.publisher = publisher
        self.msg_type = publisher.msg_type
        self._buffer = bytearray()
        self._lock = threading.Lock()

    def _buffer_for(self, size: int) -> bytearray:
        if len(self._buffer) < size:
            self._buffer = bytearray(max(size, 2 * len(self._buffer)))
        return self._buffer

    def publish(self, msg) -> int:
        """Sends ``msg``; returns its size in bytes."""
        publish = _rcl_publish()
        with self._lock:
            if not publish:
                data = cdr.serialize(msg, self.msg_type)
                self.publisher.publish(data)
                return len(data)
            view = cdr.serialize_into(msg, self.msg_type, self._buffer_for)
            address = ctypes.addressof(ctypes.c_char.from_buffer(self._buffer))
            message = _SerializedMessage(address, len(view), len(self._buffer))
            handle = self.publisher.handle
            with handle:   # as rclpy's publish: the rcl publisher stays alive during the call
                rc = publish(handle.pointer, ctypes.byref(message), None)
            if rc != 0:
                raise RuntimeError(f"rcl_publish_serialized_message on {self.publisher.topic_name} returned {rc}")
            return len(view)
