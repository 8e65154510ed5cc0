"""The device's own audio pieces around the engine (``resonera.engine``): the prompt mixer, the
chain of a render under the device's settings, the progress display; see ``device/audio/README.md``.
"""
