/*
 * shmbench/_ring/_ring_abi3.c -- _ring.c on Python's stable ABI (Py_LIMITED_API 3.11): one
 * .so, shmbench._ring._ring_abi3, that every CPython >= 3.11 loads. The host imports the
 * full build (_ring); a server the host injects into an image whose Python is another
 * version falls back to this one (shmbench/_ring/__init__.py). See _ring.c.
 */
#define Py_LIMITED_API 0x030B0000
#include "_ring.c"
