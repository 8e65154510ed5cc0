"""Firmware logic, plain Python that runs on MicroPython and CPython alike."""
