"""The C structures of recvmmsg(2) and sendmmsg(2) (struct iovec, msghdr, mmsghdr), for ctypes.

A module of their own, left out of the native build (dnsguard/native.py): mypyc cannot compile a
ctypes.Structure subclass, and dnsguard.net.mmsg, which is compiled, builds its batches from these.
"""

from __future__ import annotations

import ctypes


class Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint))
