"""The package's version (a module of its own, at the lowest layer, so that the modules that
record it need not import the package's public face, :mod:`opzo`)."""

__version__ = "0.1.0"
