"""Writes 100 MB to stdout around two training steps."""
import sys

from _steps import train

chunk = b"x" * 1023 + b"\n"
for _ in range(50 * 1024):
    sys.stdout.buffer.write(chunk)
train(2)
for _ in range(50 * 1024):
    sys.stdout.buffer.write(chunk)
