"""Entry point of `python -m tlcore`."""

import os
import sys

# TensorFlow's start-up chatter is for its developers, not for people reading a progress bar.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tlcore.cli import main  # noqa: E402

sys.exit(main())
