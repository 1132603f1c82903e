"""How much fuzzing a run does: ``FUZZ_BUDGET``.

* unset or ``ci`` (``make test``): a few thousand inputs per process target, a few
  hundred examples per codec property, a fixed seed — about three minutes on 2 cores;
* ``long`` (``make fuzz``): 100,000 inputs per process target, 20,000 examples per
  codec property, a fresh seed each run (printed: ``FUZZ_SEED`` replays it);
* a number: that many inputs per process target (codec examples scale with it).

``FUZZ_SEED`` fixes the seed; ``FUZZ_CORPUS_OUT`` is where a failing run's input stream
is written (tests/fuzz/corpus/ holds the ones kept as regression cases).
"""

from __future__ import annotations

import os
import random

_BUDGET = os.environ.get("FUZZ_BUDGET", "ci").strip().lower() or "ci"
LONG = _BUDGET == "long"
PROCESS_INPUTS = (100000 if LONG else 4000) if _BUDGET in ("ci", "long") else int(_BUDGET)
CODEC_EXAMPLES = 20_000 if LONG else max(50, min(20_000, PROCESS_INPUTS // 8))
SEED = int(os.environ.get("FUZZ_SEED") or (random.SystemRandom().randrange(1 << 32)
                                           if LONG else 20240601))
BURST = 100_000  # events written at once in the memory tests (the figure)
