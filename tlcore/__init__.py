"""Transfer Lab's engine: image classifiers by transfer learning, with no user interface."""

__version__ = "0.1.0"
