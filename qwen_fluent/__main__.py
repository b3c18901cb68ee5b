"""``python -m qwen_fluent`` is ``qwen-fluent``."""

import sys

from .cli.main import main

sys.exit(main())
